#!/usr/bin/env bash
# Installs the Debian packages a build (`deps.sh build`) or the tests (`deps.sh test`)
# need, when they are missing: with apt-get as root, through sudo otherwise. Nothing
# else on the machine changes.
set -euo pipefail

need=()
want() { # want PACKAGE CHECK...: PACKAGE when the check fails
  local pkg=$1
  shift
  "$@" >/dev/null 2>&1 || need+=("$pkg")
}

# RocksDB's bindings are generated with bindgen (libclang); its C++ needs g++.
want libclang-dev dpkg -s libclang-dev
want g++ command -v g++
want make command -v make
if [ "${1:-build}" = test ]; then
  # Python's venv, to install Terraform from PyPI for the provider's tests.
  want python3-venv python3 -c 'import venv, ensurepip'
  # The transparent-redirect tests: rules in network namespaces, both backends.
  want nftables command -v nft
  want iptables command -v iptables-legacy
  want iproute2 command -v ip
  # Prometheus' linter, for the metrics tests.
  want prometheus command -v promtool
  # A real browser for the web UI's tests (headless, driven over DevTools).
  want chromium command -v chromium
fi
((${#need[@]})) || exit 0

echo "installing: ${need[*]}"
sudo=()
if [ "$(id -u)" != 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "error: these Debian packages are missing and this is not root: ${need[*]}" >&2
    echo "install them (apt-get install ${need[*]}) and run this again" >&2
    exit 1
  fi
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
