"""Late chunking (paper.md §5, embedding.md §3) against independent computations: token layouts written out by hand,
chunk embeddings pooled with NumPy from one model pass over the joined sequence (or over the window a chunk was
assigned to), and the window rule checked by brute force over every possible window."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
from flax import nnx

from pplx_jax.core.model_config import ModelConfig
from pplx_jax.models import encoder
from pplx_jax.models import late_chunking as lc

CFG = ModelConfig(vocab_size=256, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64,
                  compute_dtype="float32", remat="none")
SEP = 255  # stands in for <|endoftext|> inside the tiny vocabulary
FAST_COMPILE = {"xla_cpu_use_fusion_emitters": False}


@pytest.fixture(scope="module")
def model():
  return encoder.create_model(CFG, seed=0)


@functools.lru_cache(maxsize=None)
def _compiled(graphdef, fn_name, shapes, num_spans):
  def hidden(params, ids):
    return nnx.merge(graphdef, nnx.State(params))(ids)

  def chunks(params, ids, mask, spans):
    return lc.late_chunk_embed(nnx.merge(graphdef, nnx.State(params)), ids, mask, spans, num_spans)

  return jax.jit({"hidden": hidden, "chunks": chunks}[fn_name])


def run_hidden(model, ids: np.ndarray) -> np.ndarray:
  """Final hidden states of one unpadded sequence [S] -> [S, D] (float64), the independent side of the checks."""
  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(state)
  fn = _compiled(graphdef, "hidden", ids.shape, 0)
  return np.asarray(fn.lower(params, ids[None]).compile(FAST_COMPILE)(params, ids[None])[0], np.float64)


def run_batch(model, batch: dict) -> np.ndarray:
  """The library path: one call on all rows, then the spans gathered back into document/chunk order."""
  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(state)
  args = (params, batch["input_ids"], batch["attention_mask"], batch["span_ids"])
  fn = _compiled(graphdef, "chunks", batch["input_ids"].shape, batch["num_spans"])
  out = fn.lower(*args).compile(FAST_COMPILE)(*args)
  return lc.gather_chunks(out, batch)


def random_doc(rng, lengths):
  return [list(rng.randint(0, SEP, n)) for n in lengths]


def joined_bounds(lengths):
  """[s, e) of every chunk in chunk_1 SEP chunk_2 ... written independently of the library."""
  starts = np.concatenate([[0], np.cumsum(np.asarray(lengths) + 1)[:-1]])
  return [(int(s), int(s + n)) for s, n in zip(starts, lengths)]


# ---------------------------------------------------------------- layout


def test_join_layout_separators_between_chunks_only():
  ids, spans = lc.join_chunks([[1, 2], [3], [4, 5, 6]], sep_id=9)
  assert ids.tolist() == [1, 2, 9, 3, 9, 4, 5, 6]
  assert spans.tolist() == [1, 1, 0, 2, 0, 3, 3, 3]
  assert ids.dtype == np.int32 and spans.dtype == np.int32
  ids, spans = lc.join_chunks([[7, 8, 9]])
  assert ids.tolist() == [7, 8, 9] and spans.tolist() == [1, 1, 1]  # one chunk: no separator at all
  ids, _ = lc.join_chunks([[1], [2]])
  assert lc.QWEN3_SEP_ID == 151643 and ids.tolist() == [1, 151643, 2]  # default separator: <|endoftext|>


def test_empty_chunk_error_names_the_index():
  with pytest.raises(ValueError, match="chunk 2 is empty"):
    lc.join_chunks([[1], [2], [], [3]], sep_id=0)
  with pytest.raises(ValueError, match="chunk 0 is empty"):
    lc.plan_windows([[], [1]], sep_id=0, max_len=4)
  with pytest.raises(ValueError, match="document 1: .*chunk 1 is empty"):
    lc.batch_documents([[[1]], [[1], []]], sep_id=0)
  with pytest.raises(ValueError, match="at least one chunk"):
    lc.join_chunks([], sep_id=0)
  with pytest.raises(ValueError, match="max_len"):
    lc.join_chunks([[1, 2], [3, 4]], sep_id=0, max_len=4)  # 5 tokens joined: never cut silently


def test_fitting_document_is_one_window_identical_to_the_join():
  rng = np.random.RandomState(0)
  doc = random_doc(rng, [4, 1, 6, 3])
  ids, spans = lc.join_chunks(doc, SEP)
  for max_len in (None, len(ids), len(ids) + 10):
    plan = lc.plan_windows(doc, SEP, max_len)
    assert len(plan.windows) == 1 and plan.truncated == ()
    (w,) = plan.windows
    assert w.start == 0 and w.chunks == (0, 1, 2, 3)
    assert np.array_equal(w.ids, ids) and np.array_equal(w.span_ids, spans)
  a = lc.batch_documents([doc], SEP, None, pad_id=0)
  b = lc.batch_documents([doc], SEP, len(ids), pad_id=0)
  for key in ("input_ids", "attention_mask", "span_ids", "chunk_row", "chunk_slot"):
    assert np.array_equal(a[key], b[key])
  assert np.array_equal(a["input_ids"][0], ids) and np.array_equal(a["span_ids"][0], spans)


# ---------------------------------------------------------------- embeddings of one pass


def test_late_chunking_equals_numpy_pooling_of_one_full_pass(model):
  rng = np.random.RandomState(1)
  lengths = [3, 7, 1, 5]
  doc = random_doc(rng, lengths)
  ids = np.asarray(sum(([SEP] + c if k else c for k, c in enumerate(doc)), []), np.int32)
  hidden = run_hidden(model, ids)
  ref = np.stack([hidden[s:e].mean(0) for s, e in joined_bounds(lengths)])
  got = run_batch(model, lc.batch_documents([doc], SEP, None))
  assert got.shape == (4, CFG.hidden_size) and got.dtype == np.float32
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
  # context matters (bidirectional pass): a chunk embedded alone differs from its late-chunked embedding
  alone = run_hidden(model, np.asarray(doc[1], np.int32)).mean(0)
  assert np.abs(alone - ref[1]).max() > 1e-3


def test_batched_documents_with_padding_equal_one_at_a_time(model):
  rng = np.random.RandomState(2)
  docs = [random_doc(rng, ls) for ls in ([2, 3], [6], [1, 1, 4, 2], [5, 4, 6, 3, 5, 2])]  # the last needs windows
  max_len = 16
  batch = lc.batch_documents(docs, SEP, max_len, pad_id=0, rows_multiple=4)
  assert batch["input_ids"].shape[0] % 4 == 0 and batch["attention_mask"][-1].sum() == 0  # an empty padding row
  got = run_batch(model, batch)
  assert np.all(np.isfinite(got))
  singles = [run_batch(model, lc.batch_documents([doc], SEP, max_len, pad_id=0)) for doc in docs]
  np.testing.assert_allclose(got, np.concatenate(singles), rtol=1e-5, atol=1e-5)
  per_doc = lc.split_documents(got, batch)
  assert [len(x) for x in per_doc] == [len(doc) for doc in docs]
  # the mapping: row r, span j+1 is chunk span_chunk[r, j] of document span_doc[r, j]
  for r in range(batch["span_doc"].shape[0]):
    for j in range(batch["num_spans"]):
      i, k = batch["span_doc"][r, j], batch["span_chunk"][r, j]
      if i >= 0:
        assert batch["chunk_row"][batch["doc_offsets"][i] + k] == r
        assert batch["chunk_slot"][batch["doc_offsets"][i] + k] == j
        toks = batch["input_ids"][r][batch["span_ids"][r] == j + 1]
        assert toks.tolist() == [int(t) for t in docs[i][k]]


# ---------------------------------------------------------------- long documents


def best_context(s, e, total, max_len, starts):
  """max over the given window starts that contain [s, e) of min(left context, right context)."""
  vals = [min(s - a, a + max_len - e) for a in starts if a <= s and e <= a + max_len]
  return max(vals) if vals else None


@pytest.mark.parametrize("stride", [None, 1, 3, 12])
def test_long_document_windows_contain_each_chunk_with_centred_maximal_context(stride):
  rng = np.random.RandomState(3)
  lengths = [5, 3, 7, 4, 6, 2, 8, 5, 3, 1, 9]
  doc = random_doc(rng, lengths)
  ids, _ = lc.join_chunks(doc, SEP)
  total, max_len = len(ids), 16
  plan = lc.plan_windows(doc, SEP, max_len, stride)
  assert plan.truncated == () and plan.num_chunks == len(lengths)
  owner = {}
  for w in plan.windows:
    assert len(w.ids) == max_len  # every window is full: a chunk of length L gets max_len - L context tokens
    assert np.array_equal(w.ids, ids[w.start:w.start + max_len])
    assert w.chunks, "windows that pool nothing are dropped"
    for k in w.chunks:
      assert k not in owner, f"chunk {k} pooled from two windows"
      owner[k] = w
    assert set(np.unique(w.span_ids)) <= {0} | {k + 1 for k in w.chunks}
  assert sorted(owner) == list(range(len(lengths)))
  step = max(1, max_len // 2) if stride is None else stride
  grid = sorted(set(range(0, total - max_len + 1, step)) | {total - max_len})
  every = range(0, total - max_len + 1)
  for k, (s, e) in enumerate(joined_bounds(lengths)):
    w = owner[k]
    a = w.start
    assert a <= s and e <= a + max_len, f"chunk {k} not fully inside its window"
    assert np.array_equal(np.flatnonzero(w.span_ids == k + 1), np.arange(s - a, e - a))  # exactly its tokens
    ctx = min(s - a, a + max_len - e)
    on_grid = best_context(s, e, total, max_len, grid)
    assert ctx == (on_grid if on_grid is not None else best_context(s, e, total, max_len, every))
    if stride == 1:
      assert ctx == best_context(s, e, total, max_len, every)  # the best of all possible windows
    if s < (max_len - (e - s)) // 2:  # near the start: all the left context there is
      assert a == 0
    if total - e < (max_len - (e - s)) // 2:  # near the end: flush with the end
      assert a == total - max_len


def test_long_document_embeddings_equal_numpy_pooling_of_each_window(model):
  rng = np.random.RandomState(4)
  lengths = [5, 3, 7, 4, 6, 2, 8]
  doc = random_doc(rng, lengths)
  ids, _ = lc.join_chunks(doc, SEP)
  max_len = 12
  plan = lc.plan_windows(doc, SEP, max_len)
  got = run_batch(model, lc.batch_documents([doc], SEP, max_len))
  for k, (s, e) in enumerate(joined_bounds(lengths)):
    (a,) = [w.start for w in plan.windows if k in w.chunks]
    hidden = run_hidden(model, ids[a:a + max_len])
    np.testing.assert_allclose(got[k], hidden[s - a:e - a].mean(0), rtol=1e-5, atol=1e-5)


def test_chunk_longer_than_the_window_is_truncated_and_reported(model):
  rng = np.random.RandomState(5)
  lengths = [3, 20, 2]
  doc = random_doc(rng, lengths)
  max_len = 8
  plan = lc.plan_windows(doc, SEP, max_len)
  assert plan.truncated == (1,)
  (w,) = [w for w in plan.windows if 1 in w.chunks]
  assert w.ids.tolist() == [int(t) for t in doc[1][:max_len]] and np.all(w.span_ids == 2)
  batch = lc.batch_documents([doc[:1], doc], SEP, max_len)
  assert batch["truncated"] == [(1, 1)]
  got = run_batch(model, batch)
  np.testing.assert_allclose(got[2], run_hidden(model, np.asarray(doc[1][:max_len], np.int32)).mean(0),
                             rtol=1e-5, atol=1e-5)
