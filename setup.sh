#!/usr/bin/env bash
# Sets up a fresh machine: Debian's WordNet (the real local text every quickstart and test uses) and a virtual
# environment at .venv with pplx-jax and everything the tests need. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -f /usr/share/wordnet/data.noun ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wordnet-base >/dev/null
fi

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch is pinned in the same command so pip takes the CPU wheel rather than a multi-GB CUDA build.
.venv/bin/python -m pip install -q -e ".[torch,test,tpu-aot]" "torch==2.13.0"
echo "setup: ready (.venv)"
