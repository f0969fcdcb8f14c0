"""`pplx-jax embed`: input handling, order, dtypes, Matryoshka, and agreement with an unbatched forward."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pplx_jax import cli
from pplx_jax.convert import load as load_lib
from pplx_jax.core.tokenizers import load_tokenizer
from pplx_jax.data.records import DataError
from pplx_jax.inference import embed


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, wordnet_tokenizer):
  root = tmp_path_factory.mktemp("embed")
  tok_dir = root / "tok"
  wordnet_tokenizer.save(tok_dir)
  assert cli.main(["init", "--config", "configs/model/tiny.py", "--tokenizer", str(tok_dir),
                   "--workdir", str(root / "model"), "--config.vocab_size=520", "--seed", "3"]) == 0
  return root / "model"


@pytest.fixture(scope="module")
def texts(wordnet_corpus):
  lines = wordnet_corpus.read_text().splitlines()
  # Varied lengths in a scrambled order so bucketing must restore the input order.
  rng = np.random.RandomState(0)
  picked = [lines[i] for i in rng.choice(len(lines), 21, replace=False)]
  return [t[: rng.randint(1, len(t) + 1)] or "x" for t in picked]


def _reference(model_dir, texts, max_length=None):
  """One text at a time, no padding, no bucketing: mean of the final hidden states."""
  model, cfg, tok_dir = load_lib.load_model(model_dir, compute_dtype="float32")
  tok = load_tokenizer(tok_dir)
  out = []
  for t in texts:
    ids = jnp.asarray([tok.encode(t)[:max_length]])
    out.append(np.asarray(model(ids)[0].mean(0)))
  return np.stack(out)


def test_embed_matches_unbatched_forward_in_input_order(model_dir, texts, tmp_path):
  assert jax.device_count() == 8, "embedding must run sharded over the 8 test devices"
  inp = tmp_path / "in.txt"
  inp.write_text("\n".join(texts) + "\n")
  assert cli.main(["embed", "--model", str(model_dir), "--input", str(inp), "--output", str(tmp_path / "o.npy"),
                   "--batch-size", "4"]) == 0
  out = np.load(tmp_path / "o.npy")
  ref = _reference(model_dir, texts)
  assert out.shape == (len(texts), 64) and out.dtype == np.float32
  np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-5)


def test_jsonl_equals_txt_and_dtypes_and_dim(model_dir, texts, tmp_path):
  (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
  (tmp_path / "in.jsonl").write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(texts)))
  outs = {}
  runs = [("txt", "float32", None), ("jsonl", "float32", None), ("jsonl", "int8", 24), ("txt", "binary", None)]
  for fmt, dtype, dim in runs:
    o = tmp_path / f"{fmt}-{dtype}-{dim}.npy"
    args = ["embed", "--model", str(model_dir), "--input", str(tmp_path / f"in.{fmt}"), "--output", str(o),
            "--dtype", dtype] + (["--dim", str(dim)] if dim else [])
    assert cli.main(args) == 0
    outs[fmt, dtype, dim] = np.load(o)
  assert np.array_equal(outs["txt", "float32", None], outs["jsonl", "float32", None])
  f = outs["txt", "float32", None]
  for dtype in ("int8", "binary"):
    for dim in (None, 24):
      outs.setdefault(("txt", dtype, dim), embed.finalize(f, dtype, dim))
  outs["txt", "float32", 24] = embed.finalize(f, "float32", 24)
  assert np.array_equal(outs["jsonl", "int8", 24], outs["txt", "int8", 24])
  f = outs["txt", "float32", None]
  # int8 codes: round(127 tanh(x)), exactly.
  i8 = outs["txt", "int8", None]
  assert i8.dtype == np.int8 and np.array_equal(i8, np.round(127 * np.tanh(f)).astype(np.int8))
  # binary: sign bits, set where x >= 0, most significant bit first.
  b = outs["txt", "binary", None]
  assert b.dtype == np.uint8 and b.shape == (len(texts), 8)
  bits = np.unpackbits(b, axis=1)
  assert np.array_equal(bits, (f >= 0).astype(np.uint8))
  assert bits[0, 0] == (f[0, 0] >= 0)  # MSB of byte 0 is dimension 0
  # Matryoshka: truncate first, then quantise.
  assert np.array_equal(outs["txt", "float32", 24], f[:, :24])
  assert np.array_equal(outs["txt", "int8", 24], i8[:, :24])
  assert outs["txt", "binary", 24].shape == (len(texts), 3)


@pytest.mark.parametrize("content,suffix,pattern", [
    (b"hello\n\nworld\n", ".txt", r"in\.txt:2: empty text"),
    (b'{"text": "a"}\n{"text": \n', ".jsonl", r"in\.jsonl:2: invalid JSON"),
    (b'{"text": "a"}\n{"txt": "b"}\n', ".jsonl", r"in\.jsonl:2: missing field 'text'"),
    (b'{"text": "a"}\n\n', ".jsonl", r"in\.jsonl:2: empty line"),
    (b"fine\nbad \xff byte\n", ".txt", r"in\.txt:2: invalid UTF-8"),
    (b'{"text": 3}\n', ".jsonl", r"in\.jsonl:1: field 'text' is int"),
])
def test_bad_input_names_file_and_line(content, suffix, pattern, tmp_path):
  p = tmp_path / f"in{suffix}"
  p.write_bytes(content)
  with pytest.raises(DataError, match=pattern):
    embed.read_texts(p)


def test_bad_input_fails_before_loading_the_model(tmp_path, capsys):
  p = tmp_path / "in.jsonl"
  p.write_text('{"text": "ok"}\n{"oops": 1}\n')
  rc = cli.main(["embed", "--model", str(tmp_path / "no-model"), "--input", str(p), "--output",
                 str(tmp_path / "o.npy")])
  assert rc == 2
  assert "in.jsonl:2: missing field 'text'" in capsys.readouterr().err
  assert not (tmp_path / "o.npy").exists()


def test_max_length_truncates(model_dir, texts):
  long = [" ".join(texts)]
  full = embed.embed_texts(str(model_dir), long, max_length=512)
  short = embed.embed_texts(str(model_dir), long, max_length=16)
  ref = _reference(model_dir, long, max_length=16)
  assert not np.allclose(full, short)
  np.testing.assert_allclose(short, ref, atol=2e-5)
def test_cli_dtype_choices_are_the_quantisers():
  from pplx_jax.cli import embed as cli_embed
  from pplx_jax.models.quantize import EMBEDDING_DTYPES
  assert cli_embed.DTYPES == EMBEDDING_DTYPES
