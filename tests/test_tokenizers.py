"""Tokenizer backends, trainers and the transformers round trip, on real WordNet gloss text."""

from __future__ import annotations

import json
import os
import unicodedata
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from pplx_jax import cli
from pplx_jax.core.tokenizers import (
    ENDOFTEXT,
    MASK_TOKEN,
    QWEN_PAT,
    HuggingFaceTokenizer,
    SentencePieceTokenizer,
    iter_documents,
    load_tokenizer,
    train_byte_level_bpe,
    train_sentencepiece,
)

WORDNET = Path("/usr/share/wordnet")
VOCAB = 2000
KINDS = ("sp_bpe", "sp_unigram", "byte_bpe")


def _glosses(name: str) -> list[str]:
  path = WORDNET / name
  if not path.is_file():
    pytest.fail(f"{path} is missing: install the Debian package `wordnet-base` (apt-get install wordnet-base)")
  out = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      # License header lines start with two spaces; the gloss follows the "|".
      if line.startswith("  ") or "|" not in line:
        continue
      out.append(line.split("|", 1)[1].strip())
  return out


def test_wordnet_is_installed():
  # Fails (not skips) so a machine without the corpus is noticed.
  assert _glosses("data.noun")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
  lines = _glosses("data.noun")[:3000] + _glosses("data.verb")[:1000]
  path = tmp_path_factory.mktemp("corpus") / "wordnet.txt"
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return path


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory) -> dict:
  root = tmp_path_factory.mktemp("trained")
  return {
      "sp_bpe": train_sentencepiece([str(corpus)], root / "sp_bpe", VOCAB),
      "sp_unigram": train_sentencepiece([str(corpus)], root / "sp_unigram", VOCAB, model_type="unigram"),
      "byte_bpe": train_byte_level_bpe([str(corpus.parent / "*.txt")], root / "byte_bpe", VOCAB),
  }


@pytest.fixture(scope="module")
def texts() -> list[str]:
  """~200 varied texts: held-out adjective glosses, perturbed, plus hand-picked edge cases."""
  held_out = _glosses("data.adj")[:150]
  varied = []
  for i, g in enumerate(held_out):
    varied.append(
        [
            g,
            f"  {g}   ",  # leading/trailing spaces
            g.upper(),
            f"{g} {i * 7919} and {i}.{i % 7}5%",  # digits
            g.replace(" ", "  ").replace(",", " ,\t"),
            f"{g}\n{held_out[i - 1]}\r\n",
        ][i % 6]
    )
  edge = [
      "",
      " ",
      "   ",
      "\n",
      "Hello, World!",
      "café naïve résumé coöperate",
      "e\u0301 (decomposed) vs é",
      "日本語のテキスト、句読点。",
      "Ελληνικά και русский текст",
      "العربية نص",
      "emoji 😀👍🏽 and ♥ ☃",
      "ﬁ ligature and ＡＢＣ fullwidth",
      "x\u00a0y non-breaking",
      "3.14159 2,718 1e-9 0x1F 12345678901234567890",
      "tab\tseparated\tvalues",
      "don't can't we'll I'M THEY'RE",
      "mixed CamelCaseWords and snake_case_words",
      "a <|mask|> b",
      "<|mask|><|mask|>x",
      "quotes \"double\" 'single' `back`",
      "symbols: @#$%^&*()[]{}<>/\\|~",
      "\x00\x07 control chars",
      "trailing newline\n\n",
      "ends with space ",
  ]
  return varied + edge


def test_decode_round_trip(trained, texts):
  for kind, tok in trained.items():
    for text in texts:
      # The byte-level BPE normalizes to NFC; the SentencePiece models are lossless.
      expected = unicodedata.normalize("NFC", text) if kind == "byte_bpe" else text
      assert tok.decode(tok.encode(text)) == expected, (kind, text)


@pytest.mark.parametrize("kind", KINDS)
def test_save_round_trips_through_transformers(kind, trained, texts, tmp_path):
  from transformers import AutoTokenizer

  tok = trained[kind]
  tok.save(tmp_path)
  hf = AutoTokenizer.from_pretrained(str(tmp_path))
  reloaded = load_tokenizer(tmp_path)
  expected = [tok.encode(t) for t in texts]

  assert [hf(t)["input_ids"] for t in texts] == expected
  assert [reloaded.encode(t) for t in texts] == expected
  assert reloaded.encode_batch(texts) == expected
  assert tok.encode_batch(texts) == expected
  assert (hf.pad_token_id, hf.eos_token_id, hf.mask_token_id) == (tok.pad_id, tok.eos_id, tok.mask_id)
  assert (reloaded.pad_id, reloaded.eos_id, reloaded.mask_id) == (tok.pad_id, tok.eos_id, tok.mask_id)
  assert reloaded.vocab_size == tok.vocab_size == VOCAB
  # The folder carries tokenizer.json, which load_tokenizer prefers, for both kinds.
  assert reloaded.kind == "huggingface"


@pytest.mark.parametrize("kind", ("sp_bpe", "sp_unigram"))
def test_sentencepiece_folder_agrees_on_literal_piece_names(kind, trained, tmp_path):
  # Why tokenizer.json is saved next to tokenizer.model: transformers treats these spellings as
  # the pieces, SentencePiece as plain characters. The saved folder must agree with itself.
  from transformers import AutoTokenizer

  trained[kind].save(tmp_path)
  hf = AutoTokenizer.from_pretrained(str(tmp_path))
  folder = load_tokenizer(tmp_path)
  for text in ["<s>", "a </s> b", "<pad>", "x<unk>", "<0x41>", "<0x0A> y", "<s> </s> <pad> <unk>"]:
    assert folder.encode(text) == hf(text)["input_ids"], text
  # The SentencePiece backend itself never emits control ids from text.
  assert trained[kind].encode("<s>") != [trained[kind].backend.bos_id()]


@pytest.mark.parametrize("kind", KINDS)
def test_special_tokens(kind, trained):
  tok = trained[kind]
  mask = tok.mask_id
  assert mask is not None and tok.token_to_id(MASK_TOKEN) == mask
  assert tok.encode(MASK_TOKEN) == [mask]
  assert tok.encode(f"fill the {MASK_TOKEN} here").count(mask) == 1
  assert tok.encode(f"x{MASK_TOKEN}y").count(mask) == 1
  assert tok.decode([mask]) == MASK_TOKEN
  assert tok.token_to_id("definitely-not-a-piece") is None
  # Neither backend adds BOS/EOS by default.
  ids = tok.encode("a plain sentence")
  assert ids == tok.encode_plain("a plain sentence")
  assert tok.eos_id not in ids and tok.pad_id not in ids
  assert 0 <= tok.pad_id < tok.vocab_size and 0 <= tok.eos_id < tok.vocab_size
  if kind == "byte_bpe":
    assert tok.pad_id == tok.eos_id == tok.token_to_id(ENDOFTEXT)
  else:
    assert (tok.token_to_id("<unk>"), tok.token_to_id("<s>")) == (0, 1)
    assert (tok.eos_id, tok.pad_id, mask) == (2, 3, 4)


def test_qwen_style_byte_level_bpe(trained, tmp_path):
  tok = trained["byte_bpe"]
  assert isinstance(tok, HuggingFaceTokenizer)
  eot = tok.token_to_id(ENDOFTEXT)
  # Qwen puts the special tokens at the end of the vocabulary.
  specials = [tok.token_to_id(t) for t in (ENDOFTEXT, "<|im_start|>", "<|im_end|>", MASK_TOKEN)]
  assert specials == list(range(VOCAB - 4, VOCAB))
  assert tok.encode(ENDOFTEXT) == [eot]
  ids = tok.encode(f"first document{ENDOFTEXT}second document")
  assert ids.count(eot) == 1 and ids[ids.index(eot) + 1 :] == tok.encode("second document")

  spec = json.loads(tok.backend.to_str())
  assert spec["normalizer"]["type"] == "NFC"
  assert spec["post_processor"] is None
  split, byte_level = spec["pre_tokenizer"]["pretokenizers"]
  assert split["pattern"]["Regex"] == QWEN_PAT and split["behavior"] == "Isolated"
  assert (byte_level["type"], byte_level["add_prefix_space"], byte_level["use_regex"]) == ("ByteLevel", False, False)

  # A bare tokenizer.json (no config, as in some Qwen checkpoints) pads with <|endoftext|>.
  (tmp_path / "tokenizer.json").write_text(tok.backend.to_str(), encoding="utf-8")
  bare = load_tokenizer(tmp_path / "tokenizer.json")
  assert bare.pad_id == bare.eos_id == eot


def test_sentencepiece_training_is_deterministic(corpus, tmp_path):
  a = train_sentencepiece([str(corpus)], tmp_path / "a", 500)
  b = train_sentencepiece([str(corpus)], tmp_path / "b", 500)
  assert (tmp_path / "a/tokenizer.model").read_bytes() == (tmp_path / "b/tokenizer.model").read_bytes()
  assert isinstance(a, SentencePieceTokenizer) and a.vocab_size == b.vocab_size == 500


def test_jsonl_input(tmp_path):
  path = tmp_path / "docs.jsonl"
  docs = ["first line\nsecond line", "another document", ""]
  path.write_text("\n".join(json.dumps({"text": d, "id": i}) for i, d in enumerate(docs)) + "\n\n")
  assert list(iter_documents([str(path)])) == docs[:2]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bad.txt", b"good line\nalso good\nbad \xff byte\n", "bad.txt:3: invalid UTF-8"),
        ("bad.jsonl", b'{"text": "ok"}\n{"text": oops}\n', "bad.jsonl:2: invalid JSON"),
        ("notext.jsonl", b'{"text": "ok"}\n{"body": "x"}\n', "notext.jsonl:2: record has no string 'text'"),
    ],
)
@pytest.mark.parametrize("train", [train_sentencepiece, train_byte_level_bpe])
def test_bad_training_input_names_file_and_line(train, name, content, message, tmp_path):
  path = tmp_path / name
  path.write_bytes(content)
  with pytest.raises(ValueError, match=message):
    train([str(path)], tmp_path / "out", 300)


def test_missing_training_input(tmp_path):
  with pytest.raises(FileNotFoundError, match="nothing-here"):
    train_sentencepiece([str(tmp_path / "nothing-here*.txt")], tmp_path / "out", 300)


def test_missing_tokenizer_names_path(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist") as e:
    load_tokenizer(tmp_path / "absent")
  assert str(tmp_path / "absent") in str(e.value)
  with pytest.raises(FileNotFoundError, match="tokenizer.json, tokenizer.model or \\*.model") as e:
    load_tokenizer(tmp_path)
  assert str(tmp_path) in str(e.value)


@pytest.mark.parametrize("kind", ["sentencepiece", "bpe"])
def test_cli(kind, corpus, tmp_path, capsys):
  out = tmp_path / "tok"
  args = ["tokenizer", "train", "--kind", kind, "--input", str(corpus.parent / "*.txt"), "--vocab-size", "600",
          "--out", str(out)]
  assert cli.main(args) == 0
  printed = capsys.readouterr().out
  assert str(out / "tokenizer_config.json") in printed and "vocab size 600" in printed
  assert load_tokenizer(out).vocab_size == 600


def test_sentencepiece_save_without_transformers(trained, tmp_path, monkeypatch):
  import sys

  monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
  tok = trained["sp_bpe"]
  with pytest.warns(UserWarning, match="transformers is not installed"):
    tok.save(tmp_path)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.model", "tokenizer_config.json"]
  reloaded = load_tokenizer(tmp_path)
  assert reloaded.kind == "sentencepiece"
  assert reloaded.encode("a gloss, with 42 digits") == tok.encode("a gloss, with 42 digits")
