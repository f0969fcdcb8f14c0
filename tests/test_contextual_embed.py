"""`pplx-jax embed --contextual` (order, shapes, dtypes, windows, bad input), its PyTorch twin over an exported
model, and `pplx-jax eval --contextual` (late chunking vs each chunk alone, side by side)."""

import json

import jax
import numpy as np
import pytest

from pplx_jax import cli
from pplx_jax.inference import contextual as embed_contextual
from pplx_jax.inference import embed
from pplx_jax.models import late_chunking as lc
from pplx_jax.stages.contextual import wordnet_docs as wc


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, wordnet_tokenizer):
  root = tmp_path_factory.mktemp("ctx_embed")
  wordnet_tokenizer.save(root / "tok")
  assert cli.main(["init", "--config", "configs/model/tiny.py", "--tokenizer", str(root / "tok"),
                   "--workdir", str(root / "model"), "--config.vocab_size=520", "--seed", "5"]) == 0
  return root / "model"


@pytest.fixture(scope="module")
def docs():
  # Real WordNet documents of 4-6 chunks, plus a one-chunk document; lengths vary so sorting must be undone.
  recs = list(wc.documents(limit=200))[:11]
  out = [r["chunks"] for r in recs]
  out.insert(3, ["a single chunk"])
  return out


def _write_docs(path, docs):
  path.write_text("".join(json.dumps({"doc_id": f"d{i}", "chunks": d}) + "\n" for i, d in enumerate(docs)))
  return path


def _reference(model_dir, docs, max_length):
  """Per document, unbatched and unsharded: plan its windows, run each window alone, mean each chunk's span."""
  from pplx_jax.convert import load as load_lib
  from pplx_jax.core.tokenizers import load_tokenizer
  model, _, tok_dir = load_lib.load_model(model_dir, compute_dtype="float32")
  tok = load_tokenizer(tok_dir)
  sep = embed_contextual.separator_id(tok)
  rows = []
  for d in docs:
    plan = lc.plan_windows(tok.encode_batch(d), sep, max_length)
    out = np.zeros((len(d), 64))
    for w in plan.windows:
      hidden = np.asarray(model(w.ids[None])[0], np.float64)
      for k in w.chunks:
        out[k] = hidden[w.span_ids == k + 1].mean(0)
    rows.append(out)
  return np.concatenate(rows), sep


def test_embed_contextual_order_shape_and_windows(model_dir, docs, tmp_path):
  assert jax.device_count() == 8
  inp = _write_docs(tmp_path / "docs.jsonl", docs)
  for max_length in (512, 24):  # 24 tokens: every multi-chunk document needs several windows
    out_path = tmp_path / f"o{max_length}.npy"
    assert cli.main(["embed", "--contextual", "--model", str(model_dir), "--input", str(inp), "--output",
                     str(out_path), "--batch-size", "4", "--max-length", str(max_length)]) == 0
    out = np.load(out_path)
    ref, sep = _reference(model_dir, docs, max_length)
    assert out.shape == (sum(map(len, docs)), 64) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-5)
  # with context, a chunk is not what it is alone; a one-chunk document is exactly the plain embedding
  alone = embed.embed_texts(str(model_dir), [c for d in docs for c in d])
  full = np.load(tmp_path / "o512.npy")
  assert np.abs(full - alone).max(axis=1)[0] > 1e-3
  k = sum(len(d) for d in docs[:3])
  np.testing.assert_allclose(full[k], alone[k], atol=2e-5)


def test_embed_contextual_dtypes_and_dim(model_dir, docs, tmp_path):
  inp = _write_docs(tmp_path / "docs.jsonl", docs)
  outs = {}
  for dtype, dim in (("float32", None), ("int8", None), ("binary", None), ("int8", 24), ("binary", 24)):
    o = tmp_path / f"{dtype}-{dim}.npy"
    assert cli.main(["embed", "--contextual", "--model", str(model_dir), "--input", str(inp), "--output", str(o),
                     "--dtype", dtype] + (["--dim", str(dim)] if dim else [])) == 0
    outs[dtype, dim] = np.load(o)
  f = outs["float32", None]
  n = sum(map(len, docs))
  assert outs["int8", None].dtype == np.int8 and np.array_equal(outs["int8", None], embed.finalize(f, "int8"))
  assert outs["binary", None].dtype == np.uint8 and outs["binary", None].shape == (n, 8)
  assert np.array_equal(outs["binary", None], embed.finalize(f, "binary"))
  assert np.array_equal(outs["int8", 24], embed.finalize(f, "int8", 24))
  assert outs["binary", 24].shape == (n, 3)


@pytest.mark.parametrize("content,pattern", [
    (b'{"doc_id": 1, "chunks": ["a"]}\n{"doc_id": 2}\n', r"docs\.jsonl:2: missing field 'chunks'"),
    (b'{"chunks": ["a"]}\n{"chunks": []}\n', r"docs\.jsonl:2: field 'chunks' must be a non-empty list"),
    (b'{"chunks": ["a", 3]}\n', r"docs\.jsonl:1: chunks\[1\] is int"),
    (b'{"chunks": ["a", "  "]}\n', r"docs\.jsonl:1: chunks\[1\] is empty"),
    (b'{"chunks": ["a"]}\n{"chunks": \n', r"docs\.jsonl:2: invalid JSON"),
    (b'{"chunks": ["a"]}\n\n', r"docs\.jsonl:2: empty line"),
    (b'{"chunks": ["\xff"]}\n', r"docs\.jsonl:1: invalid UTF-8"),
])
def test_bad_document_lines_name_file_and_line(content, pattern, tmp_path, capsys):
  p = tmp_path / "docs.jsonl"
  p.write_bytes(content)
  rc = cli.main(["embed", "--contextual", "--model", str(tmp_path / "no-model"), "--input", str(p), "--output",
                 str(tmp_path / "o.npy")])
  assert rc == 2 and not (tmp_path / "o.npy").exists()
  import re
  assert re.search(pattern, capsys.readouterr().err)


def test_pytorch_contextual_embed_equals_cli(model_dir, docs, tmp_path):
  from transformers import AutoModel, AutoTokenizer

  from pplx_jax.convert import formats
  from pplx_jax.convert.torch_contextual import contextual_embed
  hf_dir = tmp_path / "hf"
  formats.to_hf(model_dir, hf_dir)
  model = AutoModel.from_pretrained(hf_dir, local_files_only=True).eval()
  tok = AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
  inp = _write_docs(tmp_path / "docs.jsonl", docs)
  for max_length in (512, 24):
    o = tmp_path / f"o{max_length}.npy"
    assert cli.main(["embed", "--contextual", "--model", str(model_dir), "--input", str(inp), "--output", str(o),
                     "--max-length", str(max_length)]) == 0
    ours = np.load(o)
    theirs = np.concatenate(contextual_embed(model, tok, docs, max_length=max_length, batch_size=3))
    print(f"max_length {max_length}: PyTorch vs pplx-jax embed --contextual max |diff| "
          f"{np.abs(theirs - ours).max():.2e}")
    np.testing.assert_allclose(theirs, ours, atol=1e-5, rtol=1e-5)


def test_eval_contextual_reports_both_modes(model_dir, tmp_path, capsys):
  report = tmp_path / "r.json"
  assert cli.main(["eval", "--contextual", "--model", str(model_dir), "--data", "wordnet", "--max-docs", "60",
                   "--ks", "1", "10", "--json", str(report)]) == 0
  out = capsys.readouterr().out
  assert "contextual ndcg@10" in out and "non-contextual ndcg@10" in out
  metrics = json.loads(report.read_text())["metrics"]
  for mode in ("contextual", "non_contextual"):
    for dtype in ("float32", "int8", "binary"):
      assert 0.0 <= metrics[f"{mode}/{dtype}/full/ndcg@10"] <= 1.0
  assert metrics["contextual/float32/full/ndcg@10"] != metrics["non_contextual/float32/full/ndcg@10"]


def test_eval_contextual_on_a_document_file(model_dir, tmp_path):
  from pplx_jax.eval import contextual
  recs = list(wc.documents(limit=400))[:30]
  path = tmp_path / "docs.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in recs))
  from pplx_jax.stages.contextual import evalset as ctx_evalset
  queries, docs, qrels = ctx_evalset.load_retrieval_set(str(path))
  res = contextual.evaluate_model(str(model_dir), queries, docs, qrels, ("float32",), ks=(10,))
  assert set(res) == {"contextual/float32/full/ndcg@10", "non_contextual/float32/full/ndcg@10",
                      "contextual/float32/full/recall@10", "non_contextual/float32/full/recall@10",
                      "contextual/float32/full/mrr@10", "non_contextual/float32/full/mrr@10"}
