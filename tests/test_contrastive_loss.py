"""Contrastive losses against independent NumPy references written from the paper's formulas (paper.md §4.1, §4.3):
plain loops over i, j, k in float64. Sharded runs use 8 fake CPU devices (tests/conftest.py) and must equal the
single-device values, gradients included."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
from flax import nnx

from pplx_jax.core import sharding
from pplx_jax.core.model_config import ModelConfig
from pplx_jax.models import encoder
from pplx_jax.objectives import contrastive

RULES = sharding.DEFAULT_RULES
# XLA:CPU's newer fusion emitters roughly triple compile time on these small programs; the results are the same.
FAST_COMPILE = {"xla_cpu_use_fusion_emitters": False}
TAU = 0.05


def fast_jit(fn):
  """jax.jit compiled with FAST_COMPILE (positional array arguments only)."""
  return lambda *args: jax.jit(fn).lower(*args).compile(FAST_COMPILE)(*args)


def require_8_devices():
  assert jax.device_count() == 8, (
      f"multi-device contrastive tests need 8 devices, found {jax.device_count()}: XLA_FLAGS="
      "--xla_force_host_platform_device_count=8 must be set before jax is imported (tests/conftest.py does this)")


# ---------------------------------------------------------------- NumPy references (float64, loops)


def np_cos(a, b):
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def ref_pair(q, d, tau, margin=0.1, use_qq=True):
  """L_pair = -(1/N) sum_i log e^{s(q_i,d_i)/t} / (e^{s(q_i,d_i)/t} + sum_{j!=i} m_i(d_j) e^{s(q_i,d_j)/t}
  + sum_{j!=i} m_i(q_j) e^{s(q_i,q_j)/t}),  m_i(x) = 1[s(q_i,x) <= s(q_i,d_i) + margin]."""
  n = len(q)
  total, dropped, negatives = 0.0, 0, 0
  for i in range(n):
    pos = np_cos(q[i], d[i])
    den = np.exp(pos / tau)
    for j in range(n):
      if j == i:
        continue
      candidates = [d[j]] + ([q[j]] if use_qq else [])
      for x in candidates:
        s = np_cos(q[i], x)
        negatives += 1
        if margin is None or s <= pos + margin:
          den += np.exp(s / tau)
        else:
          dropped += 1
    total += -np.log(np.exp(pos / tau) / den)
  return total / n, dropped / negatives


def ref_triplet(q, d, h, tau, margin=None, use_qq=False, h_mask=None):
  """L_triplet = -(1/N) sum_i log e^{s(q_i,d_i)/t} / (sum_j e^{s(q_i,d_j)/t} + sum_j sum_k e^{s(q_i,h_jk)/t}),
  optionally with the margin mask on every negative, the q-q negatives, and padding hard negatives left out."""
  n, k = h.shape[:2]
  h_mask = np.ones((n, k), bool) if h_mask is None else h_mask
  total = 0.0
  for i in range(n):
    pos = np_cos(q[i], d[i])
    keep = lambda s: margin is None or s <= pos + margin
    den = 0.0
    for j in range(n):
      s = np_cos(q[i], d[j])
      if j == i or keep(s):
        den += np.exp(s / tau)
      if use_qq and j != i:
        s = np_cos(q[i], q[j])
        if keep(s):
          den += np.exp(s / tau)
      for kk in range(k):
        if not h_mask[j, kk]:
          continue
        s = np_cos(q[i], h[j, kk])
        if keep(s):
          den += np.exp(s / tau)
    total += -np.log(np.exp(pos / tau) / den)
  return total / n


# ---------------------------------------------------------------- data


def pair_data(n=16, dim=16, seed=0):
  """Random pairs with duplicate queries and near-duplicate documents, so that the 0.1 margin drops negatives."""
  rng = np.random.RandomState(seed)
  q = rng.randn(n, dim)
  d = q + 1.2 * rng.randn(n, dim)  # positives only moderately similar
  q[5] = q[4] + 0.01 * rng.randn(dim)  # duplicate query: q_5 is a false negative of q_4 and vice versa
  d[9] = q[3] + 0.05 * rng.randn(dim)  # a near copy of q_3 posing as someone else's positive
  d[12] = d[11] + 0.02 * rng.randn(dim)  # near-duplicate documents
  return q.astype(np.float32), d.astype(np.float32)


def assert_clear_of_margin(q, cands, pos_of, margin=0.1, gap=1e-5):
  """No similarity within `gap` of the margin threshold (float32 vs float64 must agree on the mask)."""
  for i in range(len(q)):
    pos = pos_of(i)
    for x in cands:
      assert abs(np_cos(q[i], x) - pos - margin) > gap


# ---------------------------------------------------------------- pair loss


_pair = jax.jit(contrastive.pair_infonce, static_argnames=("margin", "use_qq"))


@pytest.mark.parametrize("margin,use_qq", [(0.1, True), (None, True), (0.1, False), (None, False)])
def test_pair_infonce_matches_numpy(margin, use_qq):
  q, d = pair_data()
  assert_clear_of_margin(q, list(d) + list(q), lambda i: np_cos(q[i], d[i]))
  ref, frac = ref_pair(q, d, TAU, margin, use_qq)
  loss, metrics = _pair(q, d, TAU, margin=margin, use_qq=use_qq)
  np.testing.assert_allclose(float(loss), ref, rtol=2e-5)
  np.testing.assert_allclose(float(metrics["masked_frac"]), frac, atol=1e-7)
  if margin is not None:
    assert frac > 0, "the data must make the false-negative mask drop something"
  s = np.array([[np_cos(a, b) for b in d] for a in q])
  np.testing.assert_allclose(float(metrics["accuracy"]),
                             np.mean([s[i, i] > max(s[i, j] for j in range(len(q)) if j != i) for i in range(len(q))]))
  np.testing.assert_allclose(float(metrics["pos_sim"]), np.mean(np.diag(s)), rtol=1e-5)


def test_pair_mask_changes_the_loss_and_tiny_margin_masks_more():
  q, d = pair_data()
  with_mask = float(_pair(q, d, TAU, margin=0.1)[0])
  without = float(_pair(q, d, TAU, margin=None)[0])
  assert with_mask < without  # dropped terms only shrink the denominator
  _, m_small = _pair(q, d, TAU, margin=-0.5)
  _, m_big = _pair(q, d, TAU, margin=0.1)
  assert float(m_small["masked_frac"]) > float(m_big["masked_frac"])


def test_pair_gradient_matches_numpy_finite_differences():
  """The analytic gradient of the jitted loss against central differences of the float64 NumPy reference (the
  mask is piecewise constant and no similarity sits near its threshold, so differences stay on one piece)."""
  q, d = pair_data(dim=8, seed=3)
  assert_clear_of_margin(q, list(d) + list(q), lambda i: np_cos(q[i], d[i]), gap=1e-3)
  gq, gd = jax.jit(jax.grad(lambda a, b: contrastive.pair_infonce(a, b, TAU)[0], argnums=(0, 1)))(q, d)
  rng = np.random.RandomState(4)
  for _ in range(3):
    vq, vd = rng.randn(*q.shape), rng.randn(*d.shape)
    eps = 1e-5
    fd = (ref_pair(q + eps * vq, d + eps * vd, TAU)[0] - ref_pair(q - eps * vq, d - eps * vd, TAU)[0]) / (2 * eps)
    analytic = float(np.sum(np.asarray(gq) * vq) + np.sum(np.asarray(gd) * vd))
    np.testing.assert_allclose(analytic, fd, rtol=2e-3, atol=1e-4)


def test_masked_false_negative_far_above_the_max_gives_finite_gradients():
  """A dropped negative 1/t above the row's max must not overflow the exp (value or gradient)."""
  q = np.eye(4, dtype=np.float32)
  d = np.eye(4, dtype=np.float32)[[1, 0, 3, 2]] * 0.2 + np.eye(4, dtype=np.float32)  # weak positives
  d[1] = q[0]  # exact copy of q_0, far above q_0's positive: dropped
  loss, grads = jax.jit(jax.value_and_grad(lambda a, b: contrastive.pair_infonce(a, b, 0.001)[0],
                                          argnums=(0, 1)))(q, d)
  assert np.isfinite(float(loss)) and all(np.all(np.isfinite(np.asarray(g))) for g in grads)


def _sharded(mesh_shape, arrays):
  mesh = sharding.make_mesh(mesh_shape)
  return mesh, [jax.device_put(a, sharding.batch_sharding(mesh, RULES, a.ndim)) for a in arrays]


def test_masked_all_zero_hard_negative_gives_finite_gradients():
  """A padded hard negative with no tokens pools to an all-zero vector; masked out, it must not send NaN back to the
  encoder (the norm's derivative at 0 would)."""
  rng = np.random.default_rng(5)
  q = rng.normal(size=(4, 8)).astype(np.float32)
  d = rng.normal(size=(4, 8)).astype(np.float32)
  h = rng.normal(size=(4, 2, 8)).astype(np.float32)
  h[1, 1] = 0.0
  valid = np.ones((4, 2), bool)
  valid[1, 1] = False
  loss, grads = jax.value_and_grad(
      lambda q, d, h: contrastive.triplet_infonce(q, d, h, 0.05, hard_neg_mask=valid)[0], argnums=(0, 1, 2))(q, d, h)
  assert np.isfinite(float(loss))
  for g in grads:
    assert np.all(np.isfinite(np.asarray(g)))
  assert np.all(np.asarray(grads[2])[1, 1] == 0.0)


def test_pair_infonce_sharded_equals_single_device(mesh_shape={"data": 8}):
  require_8_devices()
  q, d = pair_data()
  fn = lambda a, b: contrastive.pair_infonce(a, b, TAU)
  (ref_loss, ref_m), ref_g = fast_jit(jax.value_and_grad(fn, argnums=(0, 1), has_aux=True))(q, d)
  mesh, (qs, ds) = _sharded(mesh_shape, [q, d])
  with sharding.activate(mesh, RULES):
    step = fast_jit(jax.value_and_grad(fn, argnums=(0, 1), has_aux=True))
    (loss, m), g = step(qs, ds)
    assert len(qs.sharding.device_set) == 8
  np.testing.assert_allclose(float(loss), ref_pair(q, d, TAU)[0], rtol=2e-5)
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
  for k in ref_m:
    np.testing.assert_allclose(float(m[k]), float(ref_m[k]), rtol=1e-6, atol=1e-7)
  for a, b in zip(g, ref_g):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- triplet loss


def triplet_data(n=16, k=3, dim=16, seed=1):
  rng = np.random.RandomState(seed)
  q, d = pair_data(n, dim, seed)
  h = d[:, None, :] + 0.8 * rng.randn(n, k, dim)  # hard negatives: close to the positive
  h[2, 1] = q[2] + 0.01 * rng.randn(dim)  # a false negative (margin would drop it)
  h_mask = rng.rand(n, k) > 0.3
  h_mask[:, 0] = True
  return q, d, h.astype(np.float32), h_mask


_triplet = jax.jit(contrastive.triplet_infonce, static_argnames=("margin", "use_qq"))


@pytest.mark.parametrize("margin,use_qq,masked", [(None, False, False), (None, False, True), (0.1, True, True),
                                                  (0.1, False, False)])
def test_triplet_infonce_matches_numpy(margin, use_qq, masked):
  q, d, h, h_mask = triplet_data()
  h_mask = h_mask if masked else None
  if margin is not None:
    assert_clear_of_margin(q, list(d) + list(q) + list(h.reshape(-1, h.shape[-1])), lambda i: np_cos(q[i], d[i]))
  ref = ref_triplet(q, d, h, TAU, margin, use_qq, h_mask)
  loss, _ = _triplet(q, d, h, TAU, margin=margin, use_qq=use_qq, hard_neg_mask=h_mask)
  np.testing.assert_allclose(float(loss), ref, rtol=2e-5)


def constructed_triplet(n=16, k=3, c=(0.9, 0.5, 0.1)):
  """q_i = d_i = e_i and h_ik = c_k e_i + sqrt(1 - c_k^2) e_{n+k}: s(q_i,d_j) = [i=j], s(q_i,h_jk) = c_k [i=j]."""
  dim = n + k
  eye = np.eye(dim, dtype=np.float64)
  q = eye[:n].copy()
  d = eye[:n].copy()
  h = np.zeros((n, k, dim))
  for j in range(n):
    for kk in range(k):
      h[j, kk] = c[kk] * eye[j] + np.sqrt(1 - c[kk] ** 2) * eye[n + kk]
  return q.astype(np.float32), d.astype(np.float32), h.astype(np.float32), np.asarray(c)


@pytest.mark.parametrize("mesh_shape", [None, {"data": 8}], ids=["1dev", "data8"])
def test_triplet_constructed_denominator(mesh_shape):
  """The closed-form loss of a constructed batch, with the hard negatives spread over the devices: a positive
  taken from the wrong column after gathering (e.g. P N N P N N read as P P .. N N, sentence-transformers #3453)
  or hard negatives attached to the wrong query would change it by O(1/t)."""
  n, k = 16, 3
  q, d, h, c = constructed_triplet(n, k)
  h_mask = np.ones((n, k), bool)
  h_mask[::2, 0] = False  # even queries lose their hardest negative
  tau = 0.1
  # query i: its positive e^{1/t}, N-1 other documents at s=0, its own valid hard negatives at c_k, and every
  # other query's valid hard negatives at s=0
  valid = h_mask.sum()
  ref = []
  for i in range(n):
    own = [c[kk] for kk in range(k) if h_mask[i, kk]]
    den = np.exp(1 / tau) + (n - 1) + np.sum(np.exp(np.asarray(own) / tau)) + (valid - len(own))
    ref.append(-np.log(np.exp(1 / tau) / den))
  ref = float(np.mean(ref))
  np.testing.assert_allclose(ref, ref_triplet(q, d, h, tau, h_mask=h_mask), rtol=1e-6)
  fn = functools.partial(contrastive.triplet_infonce, temperature=tau)
  if mesh_shape is None:
    loss, m = jax.jit(fn)(q, d, h, hard_neg_mask=h_mask)
  else:
    require_8_devices()
    mesh, (qs, ds, hs, ms) = _sharded(mesh_shape, [q, d, h, h_mask])
    assert len({s.device for s in hs.addressable_shards}) == 8  # every device holds 2 queries' hard negatives
    with sharding.activate(mesh, RULES):
      loss, m = jax.jit(fn)(qs, ds, hs, hard_neg_mask=ms)
  np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
  assert float(m["accuracy"]) == 1.0 and float(m["hard_accuracy"]) == 1.0
  np.testing.assert_allclose(float(m["hard_neg_sim"]), np.sum(h_mask * c[None]) / valid, rtol=1e-5)


def test_triplet_sharded_equals_single_device(mesh_shape={"data": 2, "fsdp": 4}):
  require_8_devices()
  q, d, h, h_mask = triplet_data()
  fn = lambda a, b, c, m: contrastive.triplet_infonce(a, b, c, TAU, margin=0.1, hard_neg_mask=m)
  vg = jax.value_and_grad(fn, argnums=(0, 1, 2), has_aux=True)
  (ref_loss, _), ref_g = fast_jit(vg)(q, d, h, h_mask)
  mesh, arrays = _sharded(mesh_shape, [q, d, h, h_mask])
  with sharding.activate(mesh, RULES):
    (loss, _), g = fast_jit(vg)(*arrays)
  np.testing.assert_allclose(float(loss), ref_triplet(q, d, h, TAU, 0.1, False, h_mask), rtol=2e-5)
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
  for a, b in zip(g, ref_g):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
  assert np.all(np.asarray(g[2])[~h_mask] == 0)  # padding hard negatives get no gradient


# ---------------------------------------------------------------- Matryoshka


def test_matryoshka_weighting_matches_numpy():
  q, d, h, h_mask = triplet_data()
  dims, weights = [4, 8, None], [1.0, 0.5, 0.25]
  pair = contrastive.matryoshka(lambda a, b: contrastive.pair_infonce(a, b, TAU), dims, weights)
  loss, metrics = fast_jit(pair)(q, d)
  ref = sum(w * ref_pair(q[:, :m] if m else q, d[:, :m] if m else d, TAU)[0] for m, w in zip(dims, weights))
  np.testing.assert_allclose(float(loss), ref, rtol=2e-5)
  np.testing.assert_allclose(float(metrics["loss@8"]), ref_pair(q[:, :8], d[:, :8], TAU)[0], rtol=2e-5)
  np.testing.assert_allclose(float(metrics["loss@full"]), ref_pair(q, d, TAU)[0], rtol=2e-5)
  trip = contrastive.triplet_objective(TAU, mrl_dims=[8, None], mrl_weights=[2.0, 1.0])
  loss, _ = jax.jit(trip)({"q": q, "d": d, "h": h}, {"h_valid": h_mask})
  ref = 2.0 * ref_triplet(q[:, :8], d[:, :8], h[..., :8], TAU, h_mask=h_mask) + ref_triplet(q, d, h, TAU,
                                                                                              h_mask=h_mask)
  np.testing.assert_allclose(float(loss), ref, rtol=2e-5)
  flat_h, _ = jax.jit(trip)({"q": q, "d": d, "h": h.reshape(-1, h.shape[-1])}, {"h_valid": h_mask})  # [N*K, D]
  np.testing.assert_allclose(float(flat_h), float(loss), rtol=1e-6)
  with pytest.raises(ValueError, match="weights"):
    contrastive.matryoshka(pair, [4, 8], [1.0])


# ---------------------------------------------------------------- embed (int8 QAT)


CFG = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64,
                  compute_dtype="float32", remat="none")


def test_embed_int8_forward_is_exact_codes():
  model = encoder.create_model(CFG, seed=0)
  rng = np.random.RandomState(0)
  ids = rng.randint(0, CFG.vocab_size, (4, 8)).astype(np.int32)
  mask = np.ones((4, 8), np.int32)
  mask[1, 5:] = 0
  mask[3, :2] = 0
  graphdef, state = nnx.split(model)

  def run(params, i, a):
    m = nnx.merge(graphdef, nnx.State(params))
    return contrastive.embed(m, i, a, "int8"), contrastive.embed(m, i, a, "none"), m(i, a)

  codes, raw, hidden = (np.asarray(x, np.float64) for x in fast_jit(run)(nnx.to_pure_dict(state), ids, mask))
  pooled = np.stack([hidden[b][mask[b] == 1].mean(0) for b in range(4)])
  np.testing.assert_allclose(raw, pooled, rtol=1e-5, atol=1e-6)
  assert np.array_equal(codes, np.round(codes)) and np.abs(codes).max() <= 127
  assert np.array_equal(codes, np.round(127 * np.tanh(raw)))
  assert len(np.unique(codes)) > 20  # not saturated / degenerate
  with pytest.raises(ValueError, match="quantize"):
    contrastive.embed(model, ids, mask, "int4")
