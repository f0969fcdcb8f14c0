"""Test-session setup that must happen before jax is imported anywhere."""

import os
import sys

# 8 fake CPU devices for the sharding tests (only takes effect if set before jax initialises its backends).
_DEVICE_FLAG = "--xla_force_host_platform_device_count=8"
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _DEVICE_FLAG).strip()
# Tiny CPU models: LLVM -O0 cuts XLA compile time 2-5x (threefry inits above all); float semantics are unchanged.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# `configs/` is not part of the installed package: make `import configs.model.qwen3_4b` work from the repo root.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

import pytest  # noqa: E402

WORDNET_LINES = 3000


@pytest.fixture(scope="session")
def wordnet_corpus(tmp_path_factory):
  """Real text: the first few thousand WordNet documents (fails, never skips, without wordnet-base)."""
  from pplx_jax.data.sources import wordnet
  path = tmp_path_factory.mktemp("corpus") / "wordnet.txt"
  texts = []
  for t in wordnet.pretraining_texts():
    texts.append(t.replace("\n", " "))
    if len(texts) >= WORDNET_LINES:
      break
  path.write_text("\n".join(texts) + "\n")
  return path


@pytest.fixture(scope="session")
def wordnet_tokenizer(tmp_path_factory, wordnet_corpus):
  """A Qwen3-style byte-level BPE trained on real WordNet text."""
  from pplx_jax.core.tokenizers import train_byte_level_bpe
  return train_byte_level_bpe([str(wordnet_corpus)], tmp_path_factory.mktemp("tok"), vocab_size=512)


@pytest.fixture(scope="session")
def gcs_server():
  """A real GCS API on loopback (fake-gcs-server, in memory); sets STORAGE_EMULATOR_HOST for this process and its
  subprocesses, so every gs:// path of pplx-jax goes there."""
  from gcs_server import GCSServer
  with GCSServer() as server:
    from pplx_jax.core import paths
    paths.configure_gcs()
    yield server
