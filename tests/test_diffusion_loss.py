"""Tests of the masked-diffusion objective (diffusion.md §7.3). References are written independently in NumPy."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from pplx_jax import sharding as shd
from pplx_jax.models import qwen3
from pplx_jax.models.config import ModelConfig
from pplx_jax.objectives import diffusion as dl
from pplx_jax.objectives.diffusion import DiffusionConfig

TINY_VOCAB = 64
TINY_MASK = 63


def tiny_cfg(dtype="bfloat16"):
  return ModelConfig(vocab_size=TINY_VOCAB, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
                     mlp_dim=48, compute_dtype=dtype, remat="none")


@pytest.fixture(scope="module")
def tiny_bf16():
  return qwen3.create_model(tiny_cfg("bfloat16"))


@pytest.fixture(scope="module")
def tiny_f32():
  return qwen3.create_model(tiny_cfg("float32"), seed=1)


# ------------------------------------------------------------------------------------------------------------------
# NumPy references (independent of the JAX code)


def np_ce(logits, target, banned=()):
  lg = np.asarray(logits, np.float64).copy()
  for v in banned:
    lg[..., v] = -np.inf
  m = lg.max(-1)
  lse = m + np.log(np.exp(lg - m[..., None]).sum(-1))
  return lse - lg[..., target]


def np_loss(logits, ids, valid, masked, p, *, shift, normalization="valid_tokens", banned=(), weighting="elbo"):
  """Reference loss from full logits [B, L, V]: loop over positions, explicit alignment."""
  b_, l_, _ = logits.shape
  row_num = np.zeros(b_)
  n_masked = 0
  ce_sum = 0.0
  for b in range(b_):
    for i in range(l_):
      if not (masked[b, i] and valid[b, i]):
        continue
      if shift:
        if i == 0 or not valid[b, i - 1]:
          continue
        lg = logits[b, i - 1]
      else:
        lg = logits[b, i]
      ce = np_ce(lg, ids[b, i], banned)
      w = 1.0 / p[b] if weighting == "elbo" else 1.0
      row_num[b] += w * ce
      n_masked += 1
      ce_sum += ce
  row_valid = valid.sum(1).astype(np.float64)
  if normalization == "valid_tokens":
    loss = row_num.sum() / max(1.0, row_valid.sum())
  elif normalization == "masked_tokens":
    loss = row_num.sum() / max(1, n_masked)
  else:
    has = row_valid > 0
    loss = (row_num[has] / row_valid[has]).sum() / max(1, has.sum())
  return loss, ce_sum / max(1, n_masked), n_masked


def np_segment_start(seg):
  out = np.zeros(seg.shape, bool)
  for b in range(seg.shape[0]):
    for i in range(seg.shape[1]):
      out[b, i] = seg[b, i] > 0 and (i == 0 or seg[b, i - 1] != seg[b, i])
  return out


def packed_batch(rng, b, l, vocab=TINY_VOCAB - 1, max_docs=3):
  """Random packed rows: a few documents, then right padding (some rows empty)."""
  ids = rng.integers(0, vocab, size=(b, l)).astype(np.int32)
  seg = np.zeros((b, l), np.int32)
  for r in range(b):
    n = int(rng.integers(0, l + 1)) if r % 3 else l
    cuts = np.sort(rng.choice(np.arange(1, max(n, 2)), size=min(max_docs - 1, max(n - 1, 0)), replace=False)) \
        if n > 1 else np.array([], int)
    doc = np.searchsorted(cuts, np.arange(n), side="right") + 1
    seg[r, :n] = doc
  return ids, seg


# ------------------------------------------------------------------------------------------------------------------
# Config


def test_config_validation_and_from_dict():
  cfg = DiffusionConfig.from_dict({"mask_token_id": 7, "t_sampler": "count", "eps": 1.0})
  assert cfg.t_sampler == "count" and cfg.eps == 1.0 and cfg.shift is True
  with pytest.raises(ValueError, match="bogus_key"):
    DiffusionConfig.from_dict({"mask_token_id": 7, "bogus_key": 1})
  with pytest.raises(ValueError, match="mask_token_id"):
    DiffusionConfig.from_dict({"eps": 0.1})
  for bad in ({"eps": 0.0}, {"eps": 1.5}, {"t_sampler": "uniform"}, {"weighting": "cart"},
              {"normalization": "tokens"}, {"random_length_prob": -0.1}, {"ce_chunk_size": 0},
              {"vocab_limit": 0}, {"mask_token_id": -1}):
    with pytest.raises(ValueError, match=list(bad)[0]):
      DiffusionConfig(**{"mask_token_id": 3, **bad})
  hash(cfg)  # static under jit


# ------------------------------------------------------------------------------------------------------------------
# 1. Oracle tightness on an enumerable toy distribution


TOY_L, TOY_V, TOY_MASK = 3, 3, 3


def toy_distribution(seed=0):
  rng = np.random.default_rng(seed)
  q = rng.dirichlet(np.ones(TOY_V ** TOY_L)).reshape((TOY_V,) * TOY_L)
  return q


def oracle_table(q, x):
  """[2^L, L, V+1] logits: for mask pattern S (bit i = position i masked), position i in S gets
  log q(x_i = v | x_{not S}) by enumeration; the mask id's logit is a large decoy (must be excluded)."""
  table = np.zeros((2 ** TOY_L, TOY_L, TOY_V + 1))
  for pat in range(2 ** TOY_L):
    s = [i for i in range(TOY_L) if pat >> i & 1]
    consistent = np.zeros_like(q, bool)
    for y in itertools.product(range(TOY_V), repeat=TOY_L):
      consistent[y] = all(y[j] == x[j] for j in range(TOY_L) if j not in s)
    qc = np.where(consistent, q, 0.0)
    for i in s:
      marg = qc.sum(axis=tuple(j for j in range(TOY_L) if j != i))
      table[pat, i, :TOY_V] = np.log(marg / marg.sum())
    table[pat, :, TOY_V] = 50.0
  return table


def _mc_batch_losses(table, x, cfg, shift, n_batches, batch, seed):
  """Loss (sum over tokens) of n_batches independent batches of `batch` copies of x, one jit call."""
  ids = jnp.tile(jnp.asarray(x, jnp.int32)[None], (batch, 1))
  valid = jnp.ones((batch, TOY_L), bool)
  maskable = dl.maskable_positions(valid, None, cfg)
  tab = jnp.asarray(table, jnp.float32)
  bits = jnp.asarray([1 << i for i in range(TOY_L)], jnp.int32)

  def one(key):
    _, p, masked = dl.sample_noise(key, valid, maskable, cfg)
    logits = tab[jnp.sum(masked * bits, axis=1)]  # [B, L, V+1] oracle logits for each row's pattern
    if shift:  # hidden position j predicts token j+1
      logits = jnp.concatenate([logits[:, 1:], jnp.zeros_like(logits[:, :1])], axis=1)
    loss, _ = dl.masked_diffusion_loss_from_logits(logits, ids, valid, masked, p, cfg)
    return loss * TOY_L  # "sequence" normalisation divides each row by L: undo it to compare the summed NELBO

  keys = jax.random.split(jax.random.key(seed), n_batches)
  return np.asarray(jax.jit(jax.vmap(one))(keys), np.float64)


@pytest.mark.parametrize("shift", [False, True])
def test_oracle_tightness_all_samplers(shift):
  q = toy_distribution()
  x = (1, 0, 2)
  table = oracle_table(q, x)
  nll = -math.log(q[x])
  if shift:  # position 0 is never masked: the bound is for -log q(x_1, x_2 | x_0)
    nll += math.log(q[x[0]].sum())
  n_batches, batch = 20000, 16
  stats = {}
  for i, sampler in enumerate(("iid", "stratified", "count")):
    cfg = DiffusionConfig(mask_token_id=TOY_MASK, t_sampler=sampler, normalization="sequence", shift=shift,
                          random_length_prob=0.0)
    losses = _mc_batch_losses(table, x, cfg, shift, n_batches, batch, seed=100 + i)
    mean, std = losses.mean(), losses.std(ddof=1)
    se = std / math.sqrt(n_batches)
    stats[sampler] = (mean, se, std)
    print(f"shift={shift} {sampler:10s}: MC {mean:.4f} +- {se:.4f} (batch-of-{batch} std {std:.3f}) vs -log q {nll:.4f}")
    assert abs(mean - nll) < 4 * se, (sampler, mean, se, nll)
  # the count sampler (exact count, l ~ U{1..n}) has a much lower variance than iid Bernoulli masking
  assert stats["count"][2] < 0.5 * stats["iid"][2]
  assert stats["stratified"][2] < stats["iid"][2]


def test_exact_nelbo_of_oracle_equals_nll():
  """Sanity of the enumeration itself: the closed-form NELBO of the oracle is -log q(x) for every x."""
  q = toy_distribution()
  for x in itertools.product(range(TOY_V), repeat=TOY_L):
    table = oracle_table(q, x)
    total = 0.0
    for pat in range(1, 2 ** TOY_L):
      s = [i for i in range(TOY_L) if pat >> i & 1]
      k = len(s)
      coef = math.factorial(k - 1) * math.factorial(TOY_L - k) / math.factorial(TOY_L)
      total += coef * sum(-table[pat, i, x[i]] for i in s)
    np.testing.assert_allclose(total, -math.log(q[x]), rtol=1e-10)


# ------------------------------------------------------------------------------------------------------------------
# 2. Context-free unbiasedness


@pytest.mark.parametrize("sampler", ["stratified", "count"])
def test_context_free_unbiased(sampler):
  """Logits that depend only on position: E[loss] = sum_i CE_i / #valid for any eps."""
  rng = np.random.default_rng(1)
  l_, v_ = 6, 5
  logits = rng.normal(size=(l_, v_)) * 2
  x = rng.integers(0, v_ - 1, size=l_)
  cfg = DiffusionConfig(mask_token_id=v_ - 1, t_sampler=sampler, eps=0.2, shift=False, random_length_prob=0.0)
  batch, n_batches = 8, 4000
  valid = jnp.asarray(np.arange(l_) < 5)[None].repeat(batch, 0)  # last column is padding
  ids = jnp.tile(jnp.asarray(x, jnp.int32)[None], (batch, 1))
  lg = jnp.tile(jnp.asarray(logits, jnp.float32)[None], (batch, 1, 1))

  def one(key):
    _, p, masked = dl.sample_noise(key, valid, dl.maskable_positions(valid, None, cfg), cfg)
    return dl.masked_diffusion_loss_from_logits(lg, ids, valid, masked, p, cfg)[0]

  losses = np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(3), n_batches)), np.float64)
  expected = sum(np_ce(logits[i], x[i], banned=(v_ - 1,)) for i in range(5)) / 5
  se = losses.std(ddof=1) / math.sqrt(n_batches)
  assert abs(losses.mean() - expected) < 4 * se, (losses.mean(), se, expected)


# ------------------------------------------------------------------------------------------------------------------
# 3. t = 1


def test_t_equals_one_is_plain_masked_ce():
  rng = np.random.default_rng(2)
  b_, l_, v_ = 4, 10, 11
  ids, seg = packed_batch(rng, b_, l_, vocab=v_ - 1)
  seg[1, :] = 0  # an all-padding row
  logits = rng.normal(size=(b_, l_, v_)).astype(np.float32)
  for shift in (True, False):
    cfg = DiffusionConfig(mask_token_id=v_ - 1, eps=1.0, t_sampler="iid", shift=shift, random_length_prob=0.0)
    valid = seg > 0
    maskable = dl.maskable_positions(jnp.asarray(valid), jnp.asarray(seg), cfg)
    t, p, masked = dl.sample_noise(jax.random.key(0), jnp.asarray(valid), maskable, cfg)
    masked = np.asarray(masked)
    np.testing.assert_array_equal(np.asarray(p), 1.0)
    exp_maskable = valid & ~np_segment_start(seg) if shift else valid
    np.testing.assert_array_equal(masked, exp_maskable)  # every maskable position, nothing else (no padding)
    loss, m = dl.masked_diffusion_loss_from_logits(jnp.asarray(logits), jnp.asarray(ids), jnp.asarray(valid),
                                                   jnp.asarray(masked), p, cfg, maskable_mask=maskable)
    # plain mean CE over maskable tokens times maskable / valid
    ces = []
    for b in range(b_):
      for i in range(l_):
        if exp_maskable[b, i]:
          ces.append(np_ce(logits[b, i - 1] if shift else logits[b, i], ids[b, i], banned=(v_ - 1,)))
    mean_ce = np.mean(ces)
    np.testing.assert_allclose(float(loss), mean_ce * exp_maskable.sum() / valid.sum(), rtol=1e-5)
    np.testing.assert_allclose(float(m["masked_ce"]), mean_ce, rtol=1e-5)
    assert float(m["realized_mask_rate"]) == 1.0 and float(m["max_weight"]) == 1.0
    assert float(m["num_masked"]) == exp_maskable.sum() and float(m["num_valid"]) == valid.sum()


# ------------------------------------------------------------------------------------------------------------------
# 4. Small-t gradients with a bf16-compute model


def test_small_t_gradients_finite(tiny_bf16):
  rng = np.random.default_rng(4)
  b_, l_ = 2, 12
  ids = jnp.asarray(rng.integers(0, TINY_VOCAB - 1, size=(b_, l_)), jnp.int32)
  seg = jnp.ones((b_, l_), jnp.int32)
  valid = seg > 0
  masked = jnp.zeros((b_, l_), bool).at[0, 3].set(True).at[1, 7].set(True)
  graphdef, state = nnx.split(tiny_bf16)

  @jax.jit
  def loss_and_grad(state, p, cfg_eps):
    del cfg_eps

    def f(st):
      model = nnx.merge(graphdef, st)
      noisy = jnp.where(masked, TINY_MASK, ids)
      hidden = model(noisy, segment_ids=seg)
      assert hidden.dtype == jnp.bfloat16
      cfg = DiffusionConfig(mask_token_id=TINY_MASK, random_length_prob=0.0, ce_chunk_size=5)
      return dl.masked_diffusion_loss(hidden, model.lm_head_weight(), ids, valid, masked, p, cfg)[0]

    return jax.value_and_grad(f)(state)

  def norm(g):
    return float(jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(g))))

  l1, g1 = loss_and_grad(state, jnp.ones((b_,), jnp.float32), 0)
  for eps in (1e-3, 1e-5):
    le, ge = loss_and_grad(state, jnp.full((b_,), eps, jnp.float32), 0)
    assert np.isfinite(float(le)) and all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(ge))
    np.testing.assert_allclose(float(le), float(l1) / eps, rtol=1e-5)
    # gradient norm = (1/eps) * |grad CE| / D (up to bf16 rounding of the backward pass)
    np.testing.assert_allclose(norm(ge), norm(g1) / eps, rtol=0.05)


# ------------------------------------------------------------------------------------------------------------------
# 5. Padding invariance


def test_padding_invariance_loss_and_metrics(tiny_f32):
  rng = np.random.default_rng(5)
  b_, l_, extra = 3, 10, 6
  ids, seg = packed_batch(rng, b_, l_)
  seg[0] = np.where(np.arange(l_) < 8, seg[0], 0)
  cfg = DiffusionConfig(mask_token_id=TINY_MASK, random_length_prob=0.0, ce_chunk_size=4)
  valid = seg > 0
  maskable = np.asarray(dl.maskable_positions(jnp.asarray(valid), jnp.asarray(seg), cfg))
  masked = maskable & (rng.random((b_, l_)) < 0.5)
  p = np.array([0.5, 0.3, 0.9], np.float32)
  t = np.array([0.4, 0.2, 0.8], np.float32)
  logits = rng.normal(size=(b_, l_, TINY_VOCAB)).astype(np.float32)

  def padded(a, value, rows=1):
    a = np.concatenate([a, np.full((b_, extra) + a.shape[2:], value, a.dtype)], axis=1)
    return np.concatenate([a, np.full((rows,) + a.shape[1:], value, a.dtype)], axis=0)  # + an all-padding row

  def run(ids_, seg_, masked_, p_, t_, logits_):
    valid_ = jnp.asarray(seg_ > 0)
    mk = dl.maskable_positions(valid_, jnp.asarray(seg_), cfg)
    return dl.masked_diffusion_loss_from_logits(jnp.asarray(logits_), jnp.asarray(ids_), valid_, jnp.asarray(masked_),
                                                jnp.asarray(p_), cfg, maskable_mask=mk, t=jnp.asarray(t_))

  base = run(ids, seg, masked, p, t, logits)
  pad_logits = padded(logits, 0.0)
  pad_logits[:, l_:] = rng.normal(size=pad_logits[:, l_:].shape)
  pad_ids = padded(ids, 5)
  pad_ids[:, l_:] = rng.integers(0, TINY_VOCAB, size=pad_ids[:, l_:].shape)  # garbage (even the mask id) in padding
  other = run(pad_ids, padded(seg, 0), padded(masked, True) & padded(valid, False), np.append(p, 0.7),
              np.append(t, 0.6), pad_logits)
  np.testing.assert_allclose(float(base[0]), float(other[0]), rtol=1e-6)
  for k in dl.METRIC_KEYS:
    np.testing.assert_allclose(float(base[1][k]), float(other[1][k]), rtol=1e-6, err_msg=k)
  ref, ref_ce, ref_n = np_loss(logits, ids, valid, masked, p, shift=True, banned=(TINY_MASK,))
  np.testing.assert_allclose(float(base[0]), ref, rtol=1e-5)

  # model level (float32 compute): padding columns are keys the model never attends to
  head = tiny_f32.lm_head_weight()
  noisy = np.where(masked, TINY_MASK, ids)
  h1 = tiny_f32(jnp.asarray(noisy), segment_ids=jnp.asarray(seg))
  pseg = padded(seg, 0)
  h2 = tiny_f32(jnp.asarray(padded(noisy, 7)), segment_ids=jnp.asarray(pseg))
  a = dl.masked_diffusion_loss(h1, head, jnp.asarray(ids), jnp.asarray(valid), jnp.asarray(masked), jnp.asarray(p), cfg)
  b = dl.masked_diffusion_loss(h2, head, jnp.asarray(pad_ids), jnp.asarray(pseg > 0),
                               jnp.asarray(padded(masked, False)), jnp.asarray(np.append(p, 0.7)), cfg)
  np.testing.assert_allclose(float(a[0]), float(b[0]), rtol=1e-5)


@pytest.mark.parametrize("sampler", ["iid", "stratified", "count"])
def test_padding_never_masked(sampler):
  rng = np.random.default_rng(6)
  ids, seg = packed_batch(rng, 6, 16)
  cfg = DiffusionConfig(mask_token_id=TINY_MASK, t_sampler=sampler, random_length_prob=0.3)
  valid = jnp.asarray(seg > 0)

  def one(key):
    k1, k2 = jax.random.split(key)
    v = dl.random_truncate(k1, valid, cfg.random_length_prob)
    mk = dl.maskable_positions(v, jnp.where(v, jnp.asarray(seg), 0), cfg)
    return dl.sample_noise(k2, v, mk, cfg)[2], v

  masks, vs = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(9), 1000))
  masks, vs = np.asarray(masks), np.asarray(vs)
  assert not (masks & ~np.asarray(valid)[None]).any()  # padding never masked
  assert not (masks & ~vs).any()  # truncated positions never masked
  starts = np_segment_start(seg)
  assert not masks[:, starts].any()  # with the shift, segment starts (and position 0) never masked
  assert masks.any()


# ------------------------------------------------------------------------------------------------------------------
# 6. Shift alignment


def test_shift_alignment():
  rng = np.random.default_rng(7)
  b_, l_, v_ = 3, 9, 8
  ids, seg = packed_batch(rng, b_, l_, vocab=v_ - 1)
  seg[0] = [1, 1, 1, 2, 2, 2, 2, 0, 0]
  valid = seg > 0
  nxt = np.concatenate([ids[:, 1:], ids[:, :1]], axis=1)
  logits = 30.0 * np.eye(v_, dtype=np.float32)[nxt]  # position i "knows" token i+1
  masked = valid.copy()
  p = np.ones(b_, np.float32)
  on = DiffusionConfig(mask_token_id=v_ - 1, shift=True, random_length_prob=0.0)
  off = on.replace(shift=False)
  _, m_on = dl.masked_diffusion_loss_from_logits(jnp.asarray(logits), jnp.asarray(ids), jnp.asarray(valid),
                                                 jnp.asarray(masked), jnp.asarray(p), on)
  _, m_off = dl.masked_diffusion_loss_from_logits(jnp.asarray(logits), jnp.asarray(ids), jnp.asarray(valid),
                                                  jnp.asarray(masked), jnp.asarray(p), off)
  assert float(m_on["masked_ce"]) < 1e-6 and float(m_on["masked_acc"]) == 1.0
  assert float(m_off["masked_ce"]) > 10.0
  # with the shift the first token of each (valid-run) is not scored: it has no predictor
  run_starts = valid & ~np.concatenate([np.zeros((b_, 1), bool), valid[:, :-1]], axis=1)
  assert float(m_on["num_masked"]) == (masked & ~run_starts).sum()
  assert float(m_off["num_masked"]) == masked.sum()
  # maskable positions: exactly valid minus segment starts (NumPy reference)
  mk = np.asarray(dl.maskable_positions(jnp.asarray(valid), jnp.asarray(seg), on))
  np.testing.assert_array_equal(mk, valid & ~np_segment_start(seg))
  assert not mk[0, 0] and not mk[0, 3] and mk[0, 4]
  np.testing.assert_array_equal(np.asarray(dl.maskable_positions(jnp.asarray(valid), jnp.asarray(seg), off)), valid)
  # the last position predicts nothing even if its logits would be "right" for a wrapped target
  ids2 = ids.copy()
  ids2[:, -1] = 0
  loss_last = dl.masked_diffusion_loss_from_logits(jnp.asarray(logits), jnp.asarray(ids2), jnp.ones((b_, l_), bool),
                                                   jnp.zeros((b_, l_), bool).at[:, 0].set(True), jnp.asarray(p), on)
  assert float(loss_last[1]["num_masked"]) == 0.0 and float(loss_last[0]) == 0.0


# ------------------------------------------------------------------------------------------------------------------
# 7. Mask-logit and padded-vocabulary exclusion


def test_mask_logit_excluded():
  rng = np.random.default_rng(8)
  b_, l_, v_ = 2, 6, 10
  mask_id, limit = 7, 8  # ids 8, 9 play the unused padded vocabulary rows
  ids = rng.integers(0, mask_id, size=(b_, l_)).astype(np.int32)
  logits = rng.normal(size=(b_, l_, v_)).astype(np.float32)
  logits[..., mask_id] = 40.0
  logits[..., 9] = 45.0
  valid = np.ones((b_, l_), bool)
  masked = valid.copy()
  p = np.full(b_, 0.5, np.float32)
  cfg = DiffusionConfig(mask_token_id=mask_id, shift=False, vocab_limit=limit, random_length_prob=0.0, ce_chunk_size=4)
  f = lambda lg, c: dl.masked_diffusion_loss_from_logits(lg, jnp.asarray(ids), jnp.asarray(valid),
                                                        jnp.asarray(masked), jnp.asarray(p), c)
  loss, m = f(jnp.asarray(logits), cfg)
  ref, ref_ce, _ = np_loss(logits, ids, valid, masked, p, shift=False, banned=(mask_id, 8, 9))
  np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
  # zero softmax mass on the excluded ids: their logits get exactly zero gradient
  g = jax.grad(lambda lg: f(lg, cfg)[0])(jnp.asarray(logits))
  assert float(jnp.max(jnp.abs(g[..., mask_id]))) == 0.0 and float(jnp.max(jnp.abs(g[..., 8:]))) == 0.0
  assert float(jnp.max(jnp.abs(g[..., :mask_id]))) > 0
  # without exclusion the decoy logits dominate
  loss_incl, m_incl = f(jnp.asarray(logits), cfg.replace(exclude_mask_logit=False, vocab_limit=None))
  assert float(m_incl["masked_ce"]) > 40.0 and float(m_incl["masked_acc"]) == 0.0 and float(m["masked_ce"]) < 10


# ------------------------------------------------------------------------------------------------------------------
# 8. Determinism and sharding


def test_determinism():
  rng = np.random.default_rng(10)
  ids, seg = packed_batch(rng, 8, 32)
  valid = jnp.asarray(seg > 0)
  for sampler in ("iid", "stratified", "count"):
    cfg = DiffusionConfig(mask_token_id=TINY_MASK, t_sampler=sampler)
    mk = dl.maskable_positions(valid, jnp.asarray(seg), cfg)
    key = jax.random.key(42)
    a = dl.sample_noise(jax.random.fold_in(key, 1), valid, mk, cfg)
    b = dl.sample_noise(jax.random.fold_in(key, 1), valid, mk, cfg)
    c = dl.sample_noise(jax.random.fold_in(key, 2), valid, mk, cfg)
    for x, y in zip(a, b):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert not np.array_equal(np.asarray(a[2]), np.asarray(c[2]))
    assert not np.array_equal(np.asarray(a[1]), np.asarray(c[1]))


def test_stratified_and_count_samplers_shape():
  valid = jnp.ones((8, 20), bool)
  cfg = DiffusionConfig(mask_token_id=1, t_sampler="stratified")
  t, p, _ = dl.sample_noise(jax.random.key(0), valid, valid, cfg)
  # one point in each stratum [b/B, (b+1)/B) after rotation: sorted gaps are exactly 1/B
  st = np.sort(np.asarray(t))
  np.testing.assert_allclose(np.diff(st), 1 / 8, atol=1e-6)
  np.testing.assert_allclose(np.asarray(p), 1e-3 + (1 - 1e-3) * np.asarray(t), rtol=1e-6)
  # count sampler: exactly l_b maskable positions masked, p = l/n, rows with no maskable position untouched
  mk = np.ones((8, 20), bool)
  mk[:, ::3] = False
  mk[5] = False
  cfg = cfg.replace(t_sampler="count")
  t, p, masked = dl.sample_noise(jax.random.key(1), valid, jnp.asarray(mk), cfg)
  masked, p = np.asarray(masked), np.asarray(p)
  n = mk.sum(1)
  assert not (masked & ~mk).any()
  for b in range(8):
    if n[b] == 0:
      assert masked[b].sum() == 0 and p[b] == 1.0
    else:
      assert 1 <= masked[b].sum() <= n[b]
      np.testing.assert_allclose(p[b], masked[b].sum() / n[b], rtol=1e-6)


def _pipeline(cfg):
  def f(hidden, w, ids, seg, rng):
    k1, k2 = jax.random.split(rng)
    valid = dl.random_truncate(k1, seg > 0, cfg.random_length_prob)
    seg = jnp.where(valid, seg, 0)
    mk = dl.maskable_positions(valid, seg, cfg)
    t, p, masked = dl.sample_noise(k2, valid, mk, cfg)
    loss, metrics = dl.masked_diffusion_loss(hidden, w, ids, valid, masked, p, cfg, maskable_mask=mk, t=t)
    return loss, metrics, masked

  return f


def test_sharded_equals_single_device():
  assert jax.device_count() == 8, "conftest must provide 8 fake CPU devices"
  rng = np.random.default_rng(11)
  b_, l_, d_, v_ = 16, 24, 8, 40
  ids = rng.integers(0, v_ - 1, size=(b_, l_)).astype(np.int32)
  seg = np.zeros((b_, l_), np.int32)
  lengths = [24, 24, 3, 0, 0, 0, 1, 24, 17, 5, 24, 24, 2, 0, 11, 24]  # shard 1 holds only padding
  for r, n in enumerate(lengths):
    seg[r, :n] = 1
    seg[r, n // 2:n] = 2  # two packed documents
  hidden = rng.normal(size=(b_, l_, d_)).astype(np.float32)
  w = rng.normal(size=(d_, v_)).astype(np.float32)
  mesh = shd.make_mesh({"data": 8})
  rows = NamedSharding(mesh, P("data"))
  rep = NamedSharding(mesh, P())
  key = jax.random.fold_in(jax.random.key(0), 17)
  for sampler in ("stratified", "count"):
    cfg = DiffusionConfig(mask_token_id=v_ - 1, t_sampler=sampler, random_length_prob=0.5, ce_chunk_size=7)
    f = jax.jit(_pipeline(cfg))
    single = f(hidden, w, ids, seg, key)
    args = (jax.device_put(hidden, rows), jax.device_put(w, rep), jax.device_put(ids, rows),
            jax.device_put(seg, rows), key)
    sharded = f(*args)
    with shd.activate(mesh):  # logical constraints active too
      sharded_c = jax.jit(_pipeline(cfg))(*args)
    for out in (sharded, sharded_c):
      np.testing.assert_array_equal(np.asarray(out[2]), np.asarray(single[2]))
      np.testing.assert_allclose(float(out[0]), float(single[0]), rtol=1e-5)
      for k in dl.METRIC_KEYS:
        np.testing.assert_allclose(float(out[1][k]), float(single[1][k]), rtol=1e-5, err_msg=k)
    assert len(sharded[2].sharding.device_set) == 8
    # the global normaliser: recompute from the masks with NumPy
    valid_np = np.asarray(dl.random_truncate(jax.random.split(key)[0], jnp.asarray(seg > 0), 0.5))
    assert float(single[1]["num_valid"]) == valid_np.sum()


# ------------------------------------------------------------------------------------------------------------------
# 9. Random length


def test_random_truncate_static_shapes():
  valid = jnp.ones((2000, 12), bool).at[:, 10:].set(False)
  out = np.asarray(dl.random_truncate(jax.random.key(0), valid, 1.0))
  assert out.shape == (2000, 12)
  lengths = out.sum(1)
  # prefix form: valid[:ell] kept, everything after dropped; ell ~ U{1..12}
  np.testing.assert_array_equal(out, np.arange(12)[None] < lengths[:, None])
  assert lengths.min() == 1 and lengths.max() == 10
  np.testing.assert_allclose((lengths < 10).mean(), 9 / 12, atol=0.04)
  np.testing.assert_array_equal(np.asarray(dl.random_truncate(jax.random.key(0), valid, 0.0)), np.asarray(valid))
  half = np.asarray(dl.random_truncate(jax.random.key(1), valid, 0.5)).sum(1)
  np.testing.assert_allclose((half < 10).mean(), 0.5 * 9 / 12, atol=0.04)


def test_random_length_in_wrapper(tiny_f32):
  rng = np.random.default_rng(12)
  b_, l_ = 4, 16
  ids = rng.integers(0, TINY_VOCAB - 1, size=(b_, l_)).astype(np.int32)
  seg = np.ones((b_, l_), np.int32)
  seg[2, 12:] = 0
  cfg = DiffusionConfig(mask_token_id=TINY_MASK, random_length_prob=1.0, t_sampler="count", ce_chunk_size=6)
  graphdef, state = nnx.split(tiny_f32)
  f = jax.jit(lambda st, batch, key: dl.diffusion_loss(nnx.merge(graphdef, st), batch, key, cfg))
  key = jax.random.key(5)
  loss, m = f(state, {"input_ids": ids, "segment_ids": seg}, key)
  k_trunc, k_noise = jax.random.split(key)
  valid = np.asarray(dl.random_truncate(k_trunc, jnp.asarray(seg > 0), 1.0))
  assert valid.shape == (b_, l_)
  assert float(m["num_valid"]) == valid.sum() < (seg > 0).sum()
  mk = dl.maskable_positions(jnp.asarray(valid), jnp.asarray(np.where(valid, seg, 0)), cfg)
  _, _, masked = dl.sample_noise(k_noise, jnp.asarray(valid), mk, cfg)
  assert not (np.asarray(masked) & ~valid).any()
  # tokens beyond the cut are neither attended to nor scored: changing them changes nothing
  ids2 = np.where(valid, ids, (ids + 1) % (TINY_VOCAB - 1))
  loss2, m2 = f(state, {"input_ids": ids2, "segment_ids": seg}, key)
  np.testing.assert_allclose(float(loss2), float(loss), rtol=1e-5)
  np.testing.assert_allclose(float(m2["masked_ce"]), float(m["masked_ce"]), rtol=1e-5)


# ------------------------------------------------------------------------------------------------------------------
# 10. Chunking


def _naive_loss(hidden, w, targets, score, wts, num_valid, mask_id):
  """Unchunked JAX reference on already-aligned targets (no shift)."""
  logits = jnp.einsum("bld,dv->blv", hidden, w)
  logits = logits.at[..., mask_id].set(-jnp.inf)
  ce = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
  return jnp.sum(jnp.where(score, ce, 0.0) * wts[:, None]) / num_valid


def test_chunked_loss_matches_unchunked_reference_and_gradients():
  rng = np.random.default_rng(13)
  b_, l_, d_, v_ = 3, 12, 6, 17
  mask_id = 16
  hidden = rng.normal(size=(b_, l_, d_)).astype(np.float32)
  w = rng.normal(size=(d_, v_)).astype(np.float32)
  ids = rng.integers(0, v_ - 1, size=(b_, l_)).astype(np.int32)
  seg = np.ones((b_, l_), np.int32)
  seg[1, 9:] = 0
  valid = seg > 0
  masked = valid & (rng.random((b_, l_)) < 0.6)
  p = np.array([0.6, 0.25, 0.8], np.float32)
  logits_np = np.einsum("bld,dv->blv", hidden.astype(np.float64), w.astype(np.float64))
  ref, ref_ce, ref_n = np_loss(logits_np, ids, valid, masked, p, shift=True, banned=(mask_id,))
  # naive JAX version for the gradients, on shifted targets computed here by hand
  targets = np.concatenate([ids[:, 1:], np.zeros((b_, 1), np.int32)], 1)
  score = np.concatenate([masked[:, 1:] & valid[:, :-1], np.zeros((b_, 1), bool)], 1)
  naive = jax.grad(_naive_loss, argnums=(0, 1))(jnp.asarray(hidden), jnp.asarray(w), jnp.asarray(targets),
                                                jnp.asarray(score), jnp.asarray(1 / p), float(valid.sum()), mask_id)
  for chunk in (1, 3, 4, 5, 7, 12, 64):
    cfg = DiffusionConfig(mask_token_id=mask_id, ce_chunk_size=chunk, random_length_prob=0.0)
    fn = lambda h, ww: dl.masked_diffusion_loss(h, ww, jnp.asarray(ids), jnp.asarray(valid), jnp.asarray(masked),
                                                jnp.asarray(p), cfg)
    (loss, m), grads = jax.jit(jax.value_and_grad(fn, argnums=(0, 1), has_aux=True))(jnp.asarray(hidden),
                                                                                    jnp.asarray(w))
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5, err_msg=f"chunk={chunk}")
    np.testing.assert_allclose(float(m["masked_ce"]), ref_ce, rtol=1e-5)
    assert float(m["num_masked"]) == ref_n
    for g, gn in zip(grads, naive):
      np.testing.assert_allclose(np.asarray(g), np.asarray(gn), rtol=1e-4, atol=1e-6, err_msg=f"chunk={chunk}")
  # unscored positions get exactly zero gradient (padding rows / columns, the last position, unmasked targets)
  gh = np.asarray(grads[0])
  assert np.all(gh[~score] == 0.0) and np.any(gh[score] != 0.0)


def test_normalizations_and_weighting_match_reference():
  rng = np.random.default_rng(14)
  b_, l_, v_ = 4, 9, 7
  ids, seg = packed_batch(rng, b_, l_, vocab=v_ - 1)
  seg[3] = 0
  valid = seg > 0
  cfg0 = DiffusionConfig(mask_token_id=v_ - 1, random_length_prob=0.0, ce_chunk_size=4)
  mk = np.asarray(dl.maskable_positions(jnp.asarray(valid), jnp.asarray(seg), cfg0))
  masked = mk & (rng.random((b_, l_)) < 0.7)
  p = rng.uniform(0.1, 1.0, size=b_).astype(np.float32)
  logits = rng.normal(size=(b_, l_, v_)).astype(np.float32)
  for norm in ("valid_tokens", "masked_tokens", "sequence"):
    for weighting in ("elbo", "none"):
      cfg = cfg0.replace(normalization=norm, weighting=weighting)
      loss, m = dl.masked_diffusion_loss_from_logits(jnp.asarray(logits), jnp.asarray(ids), jnp.asarray(valid),
                                                     jnp.asarray(masked), jnp.asarray(p), cfg)
      ref, _, _ = np_loss(logits, ids, valid, masked, p, shift=True, normalization=norm, banned=(v_ - 1,),
                          weighting=weighting)
      np.testing.assert_allclose(float(loss), ref, rtol=1e-5, err_msg=f"{norm}/{weighting}")
      assert np.isfinite(float(loss))
  # all-padding batch: no NaN anywhere
  z = jnp.zeros((b_, l_), bool)
  loss, m = dl.masked_diffusion_loss_from_logits(jnp.asarray(logits), jnp.asarray(ids), z, z, jnp.asarray(p), cfg0)
  assert float(loss) == 0.0 and all(np.isfinite(float(v)) for v in m.values())


# ------------------------------------------------------------------------------------------------------------------
# 11. The full wrapper on the tiny model, under jit


def test_diffusion_loss_wrapper_jit_and_metrics(tiny_bf16):
  rng = np.random.default_rng(15)
  b_, l_ = 8, 48
  ids, seg = packed_batch(rng, b_, l_)
  ids = np.where(ids == TINY_MASK, 0, ids)
  cfg = DiffusionConfig(mask_token_id=TINY_MASK, random_length_prob=0.0, ce_chunk_size=16)
  graphdef, state = nnx.split(tiny_bf16)

  @jax.jit
  def step(st, batch, key):
    def f(s):
      return dl.diffusion_loss(nnx.merge(graphdef, s), batch, key, cfg)

    return jax.value_and_grad(f, has_aux=True)(st)

  batch = {"input_ids": jnp.asarray(ids), "segment_ids": jnp.asarray(seg)}
  (loss, m), grads = step(state, batch, jax.random.fold_in(jax.random.key(0), 3))
  assert set(m) == set(dl.METRIC_KEYS)
  assert all(v.dtype == jnp.float32 and v.shape == () for v in m.values())
  assert np.isfinite(float(loss)) and float(loss) > 0
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
  valid = seg > 0
  maskable = valid & ~np_segment_start(seg)
  assert float(m["num_valid"]) == valid.sum()
  assert 0 < float(m["num_masked"]) <= maskable.sum()
  np.testing.assert_allclose(float(m["realized_mask_rate"]), float(m["num_masked"]) / maskable.sum(), rtol=1e-6)
  assert 0 < float(m["mean_t"]) < 1
  assert abs(float(m["realized_mask_rate"]) - float(m["mean_t"])) < 0.15
  assert 1 <= float(m["max_weight"]) <= 1 / cfg.eps
  # near-zero-init model: CE close to log(V - 1) (mask id excluded)
  assert abs(float(m["masked_ce"]) - math.log(TINY_VOCAB - 1)) < 0.2
  # same step -> same loss; another step -> another mask
  (loss2, m2), _ = step(state, batch, jax.random.fold_in(jax.random.key(0), 3))
  assert float(loss2) == float(loss)
  (loss3, m3), _ = step(state, batch, jax.random.fold_in(jax.random.key(0), 4))
  assert float(m3["num_masked"]) != float(m["num_masked"]) or float(loss3) != float(loss)

  ev = nnx.jit(lambda model, b, k: dl.eval_at_mask_ratios(model, b, k, cfg))(tiny_bf16, batch, jax.random.key(1))
  assert set(ev) == {f"eval/{k}@{r}" for k in ("ce", "acc", "num_masked") for r in ("0.15", "0.5", "0.85")}
  counts = [float(ev[f"eval/num_masked@{r}"]) for r in ("0.15", "0.5", "0.85")]
  assert counts[0] < counts[1] < counts[2]
  for r, c in zip((0.15, 0.5, 0.85), counts):
    assert abs(c / maskable.sum() - r) < 0.1
    assert abs(float(ev[f"eval/ce@{r:g}"]) - math.log(TINY_VOCAB - 1)) < 0.2
    assert 0 <= float(ev[f"eval/acc@{r:g}"]) <= 1


def test_wrapper_rejects_out_of_vocab_mask_id(tiny_bf16):
  cfg = DiffusionConfig(mask_token_id=TINY_VOCAB)
  batch = {"input_ids": jnp.zeros((1, 4), jnp.int32), "segment_ids": jnp.ones((1, 4), jnp.int32)}
  with pytest.raises(ValueError, match="mask_token_id"):
    dl.diffusion_loss(tiny_bf16, batch, jax.random.key(0), cfg)
