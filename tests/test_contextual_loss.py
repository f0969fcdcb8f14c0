"""Contextual-training losses (paper.md §4.2) against independent NumPy references written from the paper's formulas:
plain loops over i, j, k in float64. Sharded runs use 8 fake CPU devices (tests/conftest.py) and must equal the
single-device values, gradients included."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from pplx_jax.core import sharding
from pplx_jax.objectives import contextual as ctx_obj
from pplx_jax.stages.contextual.data import content_hash_ids, content_hash_words

RULES = sharding.DEFAULT_RULES
FAST_COMPILE = {"xla_cpu_use_fusion_emitters": False}
TAU = 0.05
ALPHA = 0.2


def fast_jit(fn):
  """jax.jit compiled with FAST_COMPILE (positional array arguments only)."""
  return lambda *args: jax.jit(fn).lower(*args).compile(FAST_COMPILE)(*args)


def require_8_devices():
  assert jax.device_count() == 8, (
      f"multi-device contextual tests need 8 devices, found {jax.device_count()}: XLA_FLAGS="
      "--xla_force_host_platform_device_count=8 must be set before jax is imported (tests/conftest.py does this)")


# ---------------------------------------------------------------- NumPy references (float64, loops)


def np_cos(a, b):
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def ref_seq(q, c, mask, gold, tau):
  """L_seq = -(1/N) sum_i log e^{s(q_i,c_i*)/t} / sum_{k real} e^{s(q_i,c_ik)/t}."""
  total = 0.0
  for i in range(len(q)):
    pos = np_cos(q[i], c[i, gold[i]])
    den = sum(np.exp(np_cos(q[i], c[i, k]) / tau) for k in range(c.shape[1]) if mask[i, k])
    total -= np.log(np.exp(pos / tau) / den)
  return total / len(q)


def ref_batch(q, c, mask, gold, tau, hashes=None):
  """L_batch = -(1/N) sum_i log e^{s(q_i,c_i*)/t} / sum_j sum_{k real} e^{s(q_i,c_jk)/t}; with hashes, the chunks of
  rows j != i holding the same document are left out."""
  total = 0.0
  for i in range(len(q)):
    pos = np_cos(q[i], c[i, gold[i]])
    den = 0.0
    for j in range(len(q)):
      if hashes is not None and j != i and hashes[j] == hashes[i]:
        continue
      den += sum(np.exp(np_cos(q[i], c[j, k]) / tau) for k in range(c.shape[1]) if mask[j, k])
    total -= np.log(np.exp(pos / tau) / den)
  return total / len(q)


def ref_global(q, d, hashes, tau, margin=0.1, use_qq=True):
  """L_global = -(1/N) sum_i log e^{s(q_i,d_i)/t} / (sum_j M_ij m_i(d_j) e^{s(q_i,d_j)/t}
  + sum_{j!=i} m_i(q_j) e^{s(q_i,q_j)/t}), M_ij = 0 iff h_i = h_j and i != j, m_i(x) = 1[s(q_i,x) <= s(q_i,d_i) + m]."""
  total = 0.0
  for i in range(len(q)):
    pos = np_cos(q[i], d[i])
    keep = lambda s: margin is None or s <= pos + margin
    den = 0.0
    for j in range(len(q)):
      m_ij = 0.0 if (hashes[i] == hashes[j] and i != j) else 1.0
      s = np_cos(q[i], d[j])
      den += m_ij * keep(s) * np.exp(s / tau)
      if use_qq and j != i:
        s = np_cos(q[i], q[j])
        den += keep(s) * np.exp(s / tau)
    total -= np.log(np.exp(pos / tau) / den)
  return total / len(q)


def ref_contextual(q, c, mask, gold, d, hashes, tau, beta, alpha=ALPHA, margin=0.1, use_qq=True):
  local = alpha * ref_seq(q, c, mask, gold, tau) + (1 - alpha) * ref_batch(q, c, mask, gold, tau)
  return beta * ref_global(q, d, hashes, tau, margin, use_qq) + (1 - beta) * local


# ---------------------------------------------------------------- data


def ctx_data(n=16, num_chunks=5, dim=16, seed=0, groups=((2, 3, 7), (10, 13))):
  """Queries near their gold chunk, documents near the mean of their chunks, several rows sharing one document
  (identical chunks, document embedding and hash, different queries and gold chunks), documents with fewer real
  chunks (padded slots: zero vectors or garbage), and near copies so that the 0.1 margin drops negatives."""
  rng = np.random.RandomState(seed)
  nreal = rng.randint(1, num_chunks + 1, n)
  nreal[[0, 1]] = [1, num_chunks]
  c = rng.randn(n, num_chunks, dim)
  d = np.zeros((n, dim))
  hashes = np.arange(n, dtype=np.int32) * 7 + 3  # arbitrary ids, not 0..n-1
  for group in groups:  # shared documents, spread over devices
    for j in group[1:]:
      c[j], nreal[j], hashes[j] = c[group[0]], nreal[group[0]], hashes[group[0]]
  mask = np.arange(num_chunks)[None] < nreal[:, None]
  for i in range(n):
    d[i] = c[i, :nreal[i]].mean(0) + 0.5 * rng.randn(dim)
    c[i, nreal[i]:] = 0.0 if i % 2 else 5.0 * rng.randn(num_chunks - nreal[i], dim)
  for group in groups:
    d[list(group)] = d[group[0]]
  gold = np.array([rng.randint(0, k) for k in nreal])
  gold[3] = (gold[2] + 1) % nreal[2]  # two queries of one document asking about different chunks
  q = np.stack([c[i, gold[i]] + 1.0 * rng.randn(dim) for i in range(n)])
  q[5] = q[4] + 0.01 * rng.randn(dim)  # near-duplicate queries: q-q false negatives
  d[9] = q[8] + 0.05 * rng.randn(dim)  # someone else's document that is a near copy of q_8
  f = lambda x: x.astype(np.float32)
  return f(q), f(c), mask, gold.astype(np.int32), f(d), hashes


def assert_clear_of_margin(q, d, gap=1e-5, margin=0.1):
  """No similarity within `gap` of the margin threshold (float32 vs float64 must agree on the mask)."""
  for i in range(len(q)):
    pos = np_cos(q[i], d[i])
    for x in list(d) + list(q):
      assert abs(np_cos(q[i], x) - pos - margin) > gap


def np_sims(a, b):
  return np.array([[np_cos(x, y) for y in b] for x in a])


# ---------------------------------------------------------------- values against NumPy


def test_in_sequence_loss_matches_numpy():
  q, c, mask, gold, _, _ = ctx_data()
  loss, m = jax.jit(ctx_obj.in_sequence_loss)(q, c, mask, gold, TAU)
  np.testing.assert_allclose(float(loss), ref_seq(q, c, mask, gold, TAU), rtol=2e-5)
  acc = np.mean([all(np_cos(q[i], c[i, gold[i]]) > np_cos(q[i], c[i, k])
                     for k in range(c.shape[1]) if mask[i, k] and k != gold[i]) for i in range(len(q))])
  np.testing.assert_allclose(float(m["accuracy"]), acc)
  np.testing.assert_allclose(float(m["pos_sim"]), np.mean([np_cos(q[i], c[i, gold[i]]) for i in range(len(q))]),
                             rtol=1e-5)


@pytest.mark.parametrize("dedupe", [False, True], ids=["paper", "dedupe"])
def test_in_batch_loss_matches_numpy(dedupe):
  q, c, mask, gold, _, hashes = ctx_data()
  fn = jax.jit(lambda *a: ctx_obj.in_batch_loss(*a[:4], TAU, doc_hash=a[4] if dedupe else None))
  loss, m = fn(q, c, mask, gold, hashes)
  np.testing.assert_allclose(float(loss), ref_batch(q, c, mask, gold, TAU, hashes if dedupe else None), rtol=2e-5)
  if not dedupe:  # a query of a shared document ties with the copy of its own gold chunk: never strictly first
    assert float(m["accuracy"]) <= 1 - 5 / 16


def test_in_batch_duplicates_count_the_shared_document_m_times():
  """The analysis in contextual.py: with one document in m rows, the paper's L_batch of q_i is
  -log e^{pos/t} / (m·own_i + others_i) (own_i: its document's real chunks, others_i: every other document's), the
  deduplicated one -log e^{pos/t} / (own_i + others_i); the excess lies in (0, log m)."""
  q, c, mask, gold, _, hashes = ctx_data()
  n = len(q)
  excess = []
  for i in range(n):
    m = int(np.sum(hashes == hashes[i]))
    own = sum(np.exp(np_cos(q[i], c[i, k]) / TAU) for k in range(c.shape[1]) if mask[i, k])
    others = sum(np.exp(np_cos(q[i], c[j, k]) / TAU) for j in range(n) if hashes[j] != hashes[i]
                 for k in range(c.shape[1]) if mask[j, k])
    excess.append(np.log((m * own + others) / (own + others)))
    assert (excess[-1] == 0) if m == 1 else (0 < excess[-1] < np.log(m))
  paper = float(ctx_obj.in_batch_loss(q, c, mask, gold, TAU)[0])
  deduped = float(ctx_obj.in_batch_loss(q, c, mask, gold, TAU, doc_hash=hashes)[0])
  np.testing.assert_allclose(paper - deduped, np.mean(excess), rtol=1e-4)


@pytest.mark.parametrize("margin,use_qq", [(0.1, True), (None, True), (0.1, False), (None, False)])
def test_global_loss_matches_numpy(margin, use_qq):
  q, _, _, _, d, hashes = ctx_data()
  assert_clear_of_margin(q, d)
  loss, m = jax.jit(functools.partial(ctx_obj.global_loss, margin=margin, use_qq=use_qq))(q, d, hashes, TAU)
  np.testing.assert_allclose(float(loss), ref_global(q, d, hashes, TAU, margin, use_qq), rtol=2e-5)
  s = np_sims(q, d)
  dup = (hashes[:, None] == hashes[None]) & ~np.eye(len(q), dtype=bool)
  np.testing.assert_allclose(float(m["dup_frac"]), dup.sum() / (len(q) * (len(q) - 1)), rtol=1e-6)
  acc = np.mean([all(s[i, i] > s[i, j] for j in range(len(q)) if j != i and not dup[i, j]) for i in range(len(q))])
  np.testing.assert_allclose(float(m["accuracy"]), acc)
  if margin is not None:
    assert float(m["masked_frac"]) > 0, "the data must make the false-negative mask drop something"


def test_duplicate_document_masking():
  """Rows sharing a document: their copies must leave each other's denominators (M_ij = 0), which the loss with
  every row its own document does not do; ids from content_hash_ids and MD5 words give the same masking."""
  q, _, _, _, d, hashes = ctx_data()
  masked = float(ctx_obj.global_loss(q, d, hashes, TAU)[0])
  unique = float(ctx_obj.global_loss(q, d, np.arange(len(q)), TAU)[0])
  np.testing.assert_allclose(unique, ref_global(q, d, np.arange(len(q)), TAU), rtol=2e-5)
  # a copy of the positive scores exactly like it; with margin it is kept (s = pos <= pos + 0.1): only M removes it
  assert masked < unique - 0.1
  texts = [f"document {h}" for h in hashes]
  for h in (content_hash_ids(texts), content_hash_words(texts), content_hash_words(texts, 4)):
    np.testing.assert_allclose(float(ctx_obj.global_loss(q, d, h, TAU)[0]), masked, rtol=1e-6)


def test_content_hash_helpers():
  texts = ["a", "b", "a", "ab", ["a", "b"], b"b", "c"]
  ids = content_hash_ids(texts)
  assert ids.dtype == np.int32 and ids.tolist() == [0, 1, 0, 2, 2, 1, 3]  # first-occurrence order; chunks join
  words = content_hash_words(texts)
  assert words.shape == (7, 2) and words.dtype == np.int32
  same = (words[:, None] == words[None]).all(-1)
  assert np.array_equal(same, ids[:, None] == ids[None])
  with pytest.raises(ValueError, match="words"):
    content_hash_words(texts, 5)


def test_contextual_loss_and_metrics_match_numpy():
  q, c, mask, gold, d, hashes = ctx_data()
  beta = 0.3
  loss, m = jax.jit(ctx_obj.contextual_loss)(q, c, mask, gold, d, hashes, TAU, beta)
  np.testing.assert_allclose(float(loss), ref_contextual(q, c, mask, gold, d, hashes, TAU, beta), rtol=2e-5)
  np.testing.assert_allclose(float(m["loss_seq"]), ref_seq(q, c, mask, gold, TAU), rtol=2e-5)
  np.testing.assert_allclose(float(m["loss_batch"]), ref_batch(q, c, mask, gold, TAU), rtol=2e-5)
  np.testing.assert_allclose(float(m["loss_global"]), ref_global(q, d, hashes, TAU), rtol=2e-5)
  np.testing.assert_allclose(float(m["loss_local"]), ALPHA * float(m["loss_seq"]) + (1 - ALPHA) * float(
      m["loss_batch"]), rtol=1e-6)
  np.testing.assert_allclose(float(m["beta"]), beta)
  for key in ("chunk_accuracy", "batch_chunk_accuracy", "doc_accuracy", "chunk_pos_sim", "doc_pos_sim",
              "masked_frac", "dup_frac"):
    assert key in m and np.isfinite(float(m[key]))
  local, _ = ctx_obj.local_loss(q, c, mask, gold, TAU, alpha=0.7)
  np.testing.assert_allclose(float(local), 0.7 * ref_seq(q, c, mask, gold, TAU)
                             + 0.3 * ref_batch(q, c, mask, gold, TAU), rtol=2e-5)
  objective = ctx_obj.contextual_objective(TAU)
  o_loss, _ = jax.jit(objective)({"q": q, "c": c, "d": d},
                                 {"chunk_mask": mask, "gold": gold, "doc_hash": hashes, "beta": np.float32(beta)})
  np.testing.assert_allclose(float(o_loss), float(loss), rtol=1e-6)


def test_padded_chunks_are_ignored_and_get_no_gradient():
  """Padded slots (zero vectors, as span_pool gives for an empty span, or garbage) change neither the loss nor,
  through NaN, the gradients; a gold index on a slot marked padding still counts (the positive is always in)."""
  q, c, mask, gold, d, hashes = ctx_data()
  fn = jax.jit(jax.value_and_grad(lambda a, b, e: ctx_obj.contextual_loss(a, b, mask, gold, e, hashes, TAU, 0.3)[0],
                                  argnums=(0, 1, 2)))
  loss, (gq, gc, gd) = fn(q, c, d)
  assert all(np.all(np.isfinite(np.asarray(g))) for g in (gq, gc, gd))
  assert np.all(np.asarray(gc)[~mask] == 0)
  c2 = c.copy()
  c2[~mask] = np.random.RandomState(9).randn(int((~mask).sum()), c.shape[-1])
  np.testing.assert_allclose(float(fn(q, c2, d)[0]), float(loss), rtol=1e-6)
  mask2 = mask.copy()
  mask2[np.arange(len(q)), gold] = False
  np.testing.assert_allclose(float(ctx_obj.in_sequence_loss(q, c, mask2, gold, TAU)[0]),
                             float(ctx_obj.in_sequence_loss(q, c, mask, gold, TAU)[0]), rtol=1e-6)


def test_single_chunk_document_has_zero_in_sequence_loss():
  q, c, mask, gold, _, _ = ctx_data()
  one = lambda x: x[:1]
  loss, m = ctx_obj.in_sequence_loss(one(q), one(c), one(mask), one(gold), TAU)  # row 0 has one real chunk
  assert abs(float(loss)) < 1e-6 and float(m["accuracy"]) == 1.0


# ---------------------------------------------------------------- gradients


def test_gradient_matches_numpy_finite_differences():
  """jax.grad of the full contextual loss against central differences of the float64 NumPy reference along random
  directions (the margin mask is piecewise constant and no similarity sits near its threshold)."""
  q, c, mask, gold, d, hashes = ctx_data(n=10, num_chunks=4, dim=8, seed=3, groups=((2, 3, 7), (1, 6)))
  assert_clear_of_margin(q, d, gap=1e-3)
  beta = 0.35
  grads = jax.jit(jax.grad(lambda a, b, e: ctx_obj.contextual_loss(a, b, mask, gold, e, hashes, TAU, beta)[0],
                           argnums=(0, 1, 2)))(q, c, d)
  f = lambda a, b, e: ref_contextual(a, b, mask, gold, e, hashes, TAU, beta)
  rng = np.random.RandomState(4)
  eps = 1e-5
  for _ in range(3):
    v = [rng.randn(*x.shape) for x in (q, c, d)]
    plus = [x + eps * vx for x, vx in zip((q, c, d), v)]
    minus = [x - eps * vx for x, vx in zip((q, c, d), v)]
    fd = (f(*plus) - f(*minus)) / (2 * eps)
    analytic = sum(float(np.sum(np.asarray(g, np.float64) * vx)) for g, vx in zip(grads, v))
    np.testing.assert_allclose(analytic, fd, rtol=2e-3, atol=1e-4)


# ---------------------------------------------------------------- sharded == single device == NumPy


def _sharded(mesh_shape, arrays):
  mesh = sharding.make_mesh(mesh_shape)
  return mesh, [jax.device_put(a, sharding.batch_sharding(mesh, RULES, a.ndim)) for a in arrays]


@pytest.mark.parametrize("mesh_shape,dedupe", [({"data": 8}, False), ({"data": 2, "fsdp": 4}, True)],
                         ids=["data8", "data2fsdp4-dedupe"])
def test_contextual_loss_sharded_equals_single_device(mesh_shape, dedupe):
  require_8_devices()
  q, c, mask, gold, d, hashes = ctx_data()
  fn = lambda a, b, m, g, e, h: ctx_obj.contextual_loss(a, b, m, g, e, h, TAU, 0.3, mask_duplicate_chunks=dedupe)
  vg = jax.value_and_grad(fn, argnums=(0, 1, 4), has_aux=True)
  args = [q, c, mask, gold, d, hashes]
  (ref_loss, ref_m), ref_g = fast_jit(vg)(*args)
  mesh, sharded = _sharded(mesh_shape, args)
  assert len({s.device for s in sharded[1].addressable_shards}) == 8  # 2 documents' chunks per device
  with sharding.activate(mesh, RULES):
    (loss, m), g = fast_jit(vg)(*sharded)
  local = ALPHA * ref_seq(q, c, mask, gold, TAU) + (1 - ALPHA) * ref_batch(q, c, mask, gold, TAU,
                                                                           hashes if dedupe else None)
  np.testing.assert_allclose(float(loss), 0.3 * ref_global(q, d, hashes, TAU) + 0.7 * local, rtol=2e-5)
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
  for k in ref_m:
    np.testing.assert_allclose(float(m[k]), float(ref_m[k]), rtol=1e-6, atol=1e-7)
  for a, b in zip(g, ref_g):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
  assert np.all(np.asarray(g[1])[~mask] == 0)


@pytest.mark.parametrize("name", ["in_sequence", "in_batch", "global"])
def test_each_loss_sharded_matches_numpy(name):
  require_8_devices()
  q, c, mask, gold, d, hashes = ctx_data()
  fns = {
      "in_sequence": (lambda a, b, m, g, e, h: ctx_obj.in_sequence_loss(a, b, m, g, TAU)[0],
                      lambda: ref_seq(q, c, mask, gold, TAU)),
      "in_batch": (lambda a, b, m, g, e, h: ctx_obj.in_batch_loss(a, b, m, g, TAU)[0],
                   lambda: ref_batch(q, c, mask, gold, TAU)),
      "global": (lambda a, b, m, g, e, h: ctx_obj.global_loss(a, e, h, TAU)[0], lambda: ref_global(q, d, hashes, TAU)),
  }
  fn, ref = fns[name]
  mesh, sharded = _sharded({"data": 8}, [q, c, mask, gold, d, hashes])
  with sharding.activate(mesh, RULES):
    loss = fast_jit(fn)(*sharded)
  np.testing.assert_allclose(float(loss), ref(), rtol=2e-5)


# ---------------------------------------------------------------- beta schedule


def test_beta_schedule_endpoints_and_monotone():
  total = 1000
  steps = np.arange(0, total + 1)
  betas = np.asarray(jax.jit(jax.vmap(lambda s: ctx_obj.beta_schedule(s, total)))(steps))
  np.testing.assert_allclose(betas[0], 0.2, atol=1e-7)
  np.testing.assert_allclose(betas[-1], 0.5, atol=1e-7)
  np.testing.assert_allclose(betas[total // 2], 0.35, atol=1e-6)  # cosine: half way at the middle
  np.testing.assert_allclose(betas[total // 4], 0.5 - 0.3 * 0.5 * (1 + np.cos(np.pi / 4)), atol=1e-6)
  assert np.all(np.diff(betas) >= 0) and np.all(np.diff(betas[1:-1]) > 0)
  np.testing.assert_allclose(float(ctx_obj.beta_schedule(5 * total, total)), 0.5, atol=1e-7)  # clamped after the end
  np.testing.assert_allclose(float(ctx_obj.beta_schedule(10, 100, start=0.0, end=1.0)),
                             0.5 * (1 - np.cos(np.pi * 0.1)), atol=1e-6)
