"""Tests of the masked-diffusion objective (diffusion.md §7.3). References are written independently in NumPy."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from pplx_jax.core import sharding as shd
from pplx_jax.core.model_config import ModelConfig
from pplx_jax.models import encoder
from pplx_jax.objectives import diffusion as dl
from pplx_jax.objectives.diffusion import DiffusionConfig

TINY_VOCAB = 64
TINY_MASK = 63


def tiny_cfg(dtype="bfloat16"):
  return ModelConfig(vocab_size=TINY_VOCAB, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
                     mlp_dim=48, compute_dtype=dtype, remat="none")


@pytest.fixture(scope="module")
def tiny_bf16():
  with nnx.use_eager_sharding(False):  # one compiled init instead of many eager ops
    return nnx.jit(lambda: encoder.Encoder(tiny_cfg("bfloat16"), rngs=nnx.Rngs(0)))()


@pytest.fixture(scope="module")
def tiny_f32(tiny_bf16):
  """The same weights with float32 compute (exact comparisons across paddings)."""
  return encoder.model_from_params(tiny_cfg("float32"), encoder.params_of(tiny_bf16))


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
TOY_X = (1, 1, 0)
SAMPLERS = ("iid", "stratified", "count")


def toy_distribution(seed=0):
  rng = np.random.default_rng(seed)
  return rng.dirichlet(np.ones(TOY_V ** TOY_L)).reshape((TOY_V,) * TOY_L)


def oracle_table(q, x):
  """[2^L, L, V+1] logits: for mask pattern S (bit i = position i masked), position i in S gets
  log q(x_i = v | x_{not S}) by enumeration; the mask id's logit is a large decoy (it must be excluded)."""
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


def test_oracle_tightness_all_samplers():
  """MC mean of the summed loss with the exact denoiser converges to -log q(x) (the continuous-time ELBO is tight),
  for every t sampler, with and without the shift (with it, x_0 is always visible: -log q(x_1, x_2 | x_0))."""
  q = toy_distribution()
  table = oracle_table(q, TOY_X).astype(np.float32)
  nll = {False: -math.log(q[TOY_X]), True: -math.log(q[TOY_X]) + math.log(q[TOY_X[0]].sum())}
  n_batches, batch = 20000, 16
  ids = np.tile(np.asarray(TOY_X, np.int32)[None], (batch, 1))
  valid = np.ones((batch, TOY_L), bool)
  bits = np.asarray([1 << i for i in range(TOY_L)], np.int32)
  variants = {f"{s}/shift={sh}": DiffusionConfig(mask_token_id=TOY_MASK, t_sampler=s, normalization="sequence",
                                                  shift=sh, random_length_prob=0.0)
              for s, sh in [(s, False) for s in SAMPLERS] + [("stratified", True)]}

  def one(key, cfg):
    _, p, masked = dl.sample_noise(key, valid, dl.maskable_positions(valid, None, cfg), cfg)
    logits = jnp.asarray(table)[jnp.sum(masked * bits, axis=1)]  # each row's oracle logits for its own mask pattern
    if cfg.shift:  # hidden position j predicts token j+1
      logits = jnp.concatenate([logits[:, 1:], jnp.zeros_like(logits[:, :1])], axis=1)
    loss, _ = dl.masked_diffusion_loss_from_logits(logits, ids, valid, masked, p, cfg)
    return loss * TOY_L  # "sequence" divides each row by its L real tokens: undo it to get the summed NELBO

  @jax.jit
  def run(key):
    return {name: jax.vmap(lambda k, c=cfg: one(k, c))(jax.random.split(jax.random.fold_in(key, j), n_batches))
            for j, (name, cfg) in enumerate(variants.items())}

  out = {k: np.asarray(v, np.float64) for k, v in run(jax.random.key(2024)).items()}
  stds = {}
  for name, cfg in variants.items():
    losses = out[name]
    mean, std = losses.mean(), losses.std(ddof=1)
    se = std / math.sqrt(n_batches)
    stds[name] = std
    print(f"{name:22s} MC {mean:.4f} +- {se:.4f} (std of a batch-of-{batch} mean {std:.3f}) "
          f"vs -log q {nll[cfg.shift]:.4f}")
    assert abs(mean - nll[cfg.shift]) < 4 * se, (name, mean, se, nll[cfg.shift])
  # the count sampler (exact count, l ~ U{1..n}) has a much lower variance than Bernoulli masking
  assert stds["count/shift=False"] < 0.5 * stds["iid/shift=False"]


# ------------------------------------------------------------------------------------------------------------------
# 2. Context-free unbiasedness


def test_context_free_unbiased():
  """Logits that depend only on position: E[loss] = sum_i CE_i / #valid for any eps."""
  rng = np.random.default_rng(1)
  l_, v_ = 6, 5
  logits = rng.normal(size=(l_, v_)) * 2
  x = rng.integers(0, v_ - 1, size=l_)
  batch, n_batches = 8, 4000
  valid = np.asarray(np.arange(l_) < 5)[None].repeat(batch, 0)  # last column is padding
  ids = np.tile(np.asarray(x, np.int32)[None], (batch, 1))
  lg = np.tile(np.asarray(logits, np.float32)[None], (batch, 1, 1))
  cfgs = {s: DiffusionConfig(mask_token_id=v_ - 1, t_sampler=s, eps=0.2, shift=False, random_length_prob=0.0)
          for s in ("stratified", "count")}

  def one(key, cfg):
    _, p, masked = dl.sample_noise(key, valid, dl.maskable_positions(valid, None, cfg), cfg)
    return dl.masked_diffusion_loss_from_logits(lg, ids, valid, masked, p, cfg)[0]

  run = jax.jit(lambda key: {s: jax.vmap(lambda k, c=c: one(k, c))(jax.random.split(jax.random.fold_in(key, i),
                                                                                     n_batches))
                             for i, (s, c) in enumerate(cfgs.items())})
  expected = sum(np_ce(logits[i], x[i], banned=(v_ - 1,)) for i in range(5)) / 5
  for s, losses in run(jax.random.key(3)).items():
    losses = np.asarray(losses, np.float64)
    se = losses.std(ddof=1) / math.sqrt(n_batches)
    assert abs(losses.mean() - expected) < 4 * se, (s, losses.mean(), se, expected)


# ------------------------------------------------------------------------------------------------------------------
# 3. t = 1


def test_t_equals_one_is_plain_masked_ce():
  rng = np.random.default_rng(2)
  b_, l_, v_ = 4, 10, 11
  ids, seg = packed_batch(rng, b_, l_, vocab=v_ - 1)
  seg[1, :] = 0  # an all-padding row
  valid = seg > 0
  logits = rng.normal(size=(b_, l_, v_)).astype(np.float32)
  cfgs = {sh: DiffusionConfig(mask_token_id=v_ - 1, eps=1.0, t_sampler="iid", shift=sh, random_length_prob=0.0)
          for sh in (True, False)}

  @jax.jit
  def run(logits, ids, seg):
    out = {}
    for sh, cfg in cfgs.items():
      v = seg > 0
      mk = dl.maskable_positions(v, seg, cfg)
      _, p, masked = dl.sample_noise(jax.random.key(0), v, mk, cfg)
      out[f"shift={sh}"] = (p, masked) + dl.masked_diffusion_loss_from_logits(logits, ids, v, masked, p, cfg,
                                                                               maskable_mask=mk)
    return out

  out = run(logits, ids, seg)
  for sh in (True, False):
    p, masked, loss, m = out[f"shift={sh}"]
    np.testing.assert_array_equal(np.asarray(p), 1.0)
    exp_maskable = valid & ~np_segment_start(seg) if sh else valid
    np.testing.assert_array_equal(np.asarray(masked), exp_maskable)  # every maskable position, no padding
    ces = [np_ce(logits[b, i - 1] if sh else logits[b, i], ids[b, i], banned=(v_ - 1,))
           for b in range(b_) for i in range(l_) if exp_maskable[b, i]]
    mean_ce = np.mean(ces)
    # plain mean CE over the maskable tokens, times maskable / valid
    np.testing.assert_allclose(float(loss), mean_ce * exp_maskable.sum() / valid.sum(), rtol=1e-5)
    np.testing.assert_allclose(float(m["masked_ce"]), mean_ce, rtol=1e-5)
    assert float(m["realized_mask_rate"]) == 1.0 and float(m["max_weight"]) == 1.0
    assert float(m["num_masked"]) == exp_maskable.sum() and float(m["num_valid"]) == valid.sum()


# ------------------------------------------------------------------------------------------------------------------
# 4. Small-t gradients with a bf16-compute model


def test_small_t_gradients_finite(tiny_bf16):
  rng = np.random.default_rng(4)
  b_, l_ = 2, 12
  ids = rng.integers(0, TINY_VOCAB - 1, size=(b_, l_)).astype(np.int32)
  seg = np.ones((b_, l_), np.int32)
  valid = seg > 0
  masked = np.zeros((b_, l_), bool)
  masked[0, 3] = masked[1, 7] = True
  cfg = DiffusionConfig(mask_token_id=TINY_MASK, random_length_prob=0.0, ce_chunk_size=5)
  graphdef, state = nnx.split(tiny_bf16)

  def f(st, p):
    model = nnx.merge(graphdef, st)
    hidden = model(jnp.where(masked, TINY_MASK, ids), segment_ids=seg)
    assert hidden.dtype == jnp.bfloat16
    return dl.masked_diffusion_loss(hidden, model.lm_head_weight(), ids, valid, masked, p, cfg)[0]

  loss_and_grad = jax.jit(jax.value_and_grad(f))

  def norm(g):  # NumPy on the host: no eager device ops to compile
    return math.sqrt(sum(float(np.sum(np.square(np.asarray(x, np.float64)))) for x in jax.tree.leaves(g)))

  l1, g1 = loss_and_grad(state, np.ones((b_,), np.float32))
  assert np.isfinite(float(l1)) and norm(g1) > 0
  for eps in (1e-3, 1e-5):
    le, ge = loss_and_grad(state, np.full((b_,), eps, np.float32))
    assert np.isfinite(float(le)) and all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(ge))
    np.testing.assert_allclose(float(le), float(l1) / eps, rtol=1e-5)
    # |grad| = (1/eps) |grad CE| / D, up to bf16 rounding in the backward pass
    np.testing.assert_allclose(norm(ge), norm(g1) / eps, rtol=0.05)


# ------------------------------------------------------------------------------------------------------------------
# 5. Padding invariance


def test_padding_invariance_loss_and_metrics():
  rng = np.random.default_rng(5)
  b_, l_, extra = 3, 10, 6
  ids, seg = packed_batch(rng, b_, l_)
  seg[0] = np.where(np.arange(l_) < 8, seg[0], 0)
  cfg = DiffusionConfig(mask_token_id=TINY_MASK, random_length_prob=0.0, ce_chunk_size=4)
  valid = seg > 0
  maskable = valid & ~np_segment_start(seg)
  masked = maskable & (rng.random((b_, l_)) < 0.5)
  p = np.array([0.5, 0.3, 0.9], np.float32)
  t = np.array([0.4, 0.2, 0.8], np.float32)
  logits = rng.normal(size=(b_, l_, TINY_VOCAB)).astype(np.float32)

  def padded(a, value, garbage=None):
    """extra padding columns and one all-padding row, optionally filled with random garbage."""
    out = np.full((b_ + 1, l_ + extra) + a.shape[2:], value, a.dtype)
    if garbage is not None:
      out[...] = garbage(out.shape)
    out[:b_, :l_] = a
    return out

  small = dict(ids=ids, seg=seg, masked=masked, p=p, t=t, logits=logits)
  big = dict(ids=padded(ids, 0, lambda s: rng.integers(0, TINY_VOCAB, size=s)),  # garbage, even the mask id
             seg=padded(seg, 0), masked=padded(masked, True), p=np.append(p, 0.7), t=np.append(t, 0.6),
             logits=padded(logits, 0.0, lambda s: rng.normal(size=s)))
  big["masked"][:b_, l_:] = True  # masked flags on padding are ignored

  def run(d):
    valid_ = d["seg"] > 0
    mk = dl.maskable_positions(valid_, d["seg"], cfg)
    return dl.masked_diffusion_loss_from_logits(d["logits"], d["ids"], valid_, d["masked"], d["p"], cfg,
                                                maskable_mask=mk, t=d["t"])

  base, other = jax.jit(lambda a, b: (run(a), run(b)))(small, big)
  np.testing.assert_allclose(float(base[0]), float(other[0]), rtol=1e-6)
  for k in dl.METRIC_KEYS:
    np.testing.assert_allclose(float(base[1][k]), float(other[1][k]), rtol=1e-6, err_msg=k)
  ref, ref_ce, ref_n = np_loss(logits, ids, valid, masked, p, shift=True, banned=(TINY_MASK,))
  np.testing.assert_allclose(float(base[0]), ref, rtol=1e-5)
  np.testing.assert_allclose(float(base[1]["masked_ce"]), ref_ce, rtol=1e-5)
  assert float(base[1]["num_masked"]) == ref_n


def test_padding_never_masked():
  rng = np.random.default_rng(6)
  ids, seg = packed_batch(rng, 6, 16)
  valid = jnp.asarray(seg > 0)
  cfgs = {s: DiffusionConfig(mask_token_id=TINY_MASK, t_sampler=s, random_length_prob=0.3) for s in SAMPLERS}

  def one(key, cfg):
    k1, k2 = jax.random.split(key)
    v = dl.random_truncate(k1, valid, cfg.random_length_prob)
    mk = dl.maskable_positions(v, jnp.where(v, jnp.asarray(seg), 0), cfg)
    return dl.sample_noise(k2, v, mk, cfg)[2], v

  run = jax.jit(lambda key: {s: jax.vmap(lambda k, c=c: one(k, c))(jax.random.split(key, 1000))
                             for s, c in cfgs.items()})
  starts = np_segment_start(seg)
  for s, (masks, vs) in run(jax.random.key(9)).items():
    masks, vs = np.asarray(masks), np.asarray(vs)
    assert not (masks & ~np.asarray(valid)[None]).any(), s  # padding never masked
    assert not (masks & ~vs).any(), s  # truncated positions never masked
    assert not masks[:, starts].any(), s  # with the shift, segment starts (and position 0) never masked
    assert masks.any() and (vs != np.asarray(valid)[None]).any(), s


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
  p = np.ones(b_, np.float32)
  on = DiffusionConfig(mask_token_id=v_ - 1, shift=True, random_length_prob=0.0)
  off = on.replace(shift=False)
  ids_last = ids.copy()
  ids_last[:, -1] = ids[:, 0]  # the wrapped "next token" of the last position

  @jax.jit
  def run(logits, ids, ids_last, seg, p):
    v = seg > 0
    first_only = jnp.zeros_like(v).at[:, 0].set(True)
    return (dl.masked_diffusion_loss_from_logits(logits, ids, v, v, p, on),
            dl.masked_diffusion_loss_from_logits(logits, ids, v, v, p, off),
            dl.maskable_positions(v, seg, on), dl.maskable_positions(v, seg, off),
            # the last position predicts nothing, even when its logits "match" a wrapped target
            dl.masked_diffusion_loss_from_logits(logits, ids_last, jnp.ones_like(v), first_only, p, on),
            # an injected mask on a segment start is not scored across the boundary when segment ids are given
            dl.masked_diffusion_loss_from_logits(logits, ids, v, v, p, on, segment_ids=seg)[1])

  (_, m_on), (_, m_off), mk_on, mk_off, (loss_last, m_last), m_seg = run(logits, ids, ids_last, seg, p)
  assert float(m_on["masked_ce"]) < 1e-6 and float(m_on["masked_acc"]) == 1.0
  assert float(m_off["masked_ce"]) > 10.0
  # with the shift the first token of each valid run has no predictor and is not scored
  run_starts = valid & ~np.concatenate([np.zeros((b_, 1), bool), valid[:, :-1]], axis=1)
  assert float(m_on["num_masked"]) == (valid & ~run_starts).sum()
  assert float(m_off["num_masked"]) == valid.sum()
  assert float(m_seg["num_masked"]) == (valid & ~np_segment_start(seg)).sum() < float(m_on["num_masked"])
  # maskable positions: exactly valid minus segment starts (NumPy reference)
  mk_on = np.asarray(mk_on)
  np.testing.assert_array_equal(mk_on, valid & ~np_segment_start(seg))
  assert not mk_on[0, 0] and not mk_on[0, 3] and mk_on[0, 4]
  np.testing.assert_array_equal(np.asarray(mk_off), valid)
  assert float(m_last["num_masked"]) == 0.0 and float(loss_last) == 0.0


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
  p = np.full(b_, 0.5, np.float32)
  cfg = DiffusionConfig(mask_token_id=mask_id, shift=False, vocab_limit=limit, random_length_prob=0.0, ce_chunk_size=4)
  incl = cfg.replace(exclude_mask_logit=False, vocab_limit=None)

  @jax.jit
  def run(lg):
    f = lambda x, c: dl.masked_diffusion_loss_from_logits(x, ids, valid, valid, p, c)
    return f(lg, cfg), jax.grad(lambda x: f(x, cfg)[0])(lg), f(lg, incl)

  (loss, m), g, (_, m_incl) = run(jnp.asarray(logits))
  ref, ref_ce, _ = np_loss(logits, ids, valid, valid, p, shift=False, banned=(mask_id, 8, 9))
  np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
  # zero softmax mass on the excluded ids: their logits get exactly zero gradient
  g = np.asarray(g)
  assert np.abs(g[..., mask_id:]).max() == 0.0 and np.abs(g[..., :mask_id]).max() > 0
  # without exclusion the decoy logits dominate
  assert float(m_incl["masked_ce"]) > 40.0 and float(m_incl["masked_acc"]) == 0.0 and float(m["masked_ce"]) < 10


# ------------------------------------------------------------------------------------------------------------------
# 8. Determinism and sharding


def test_determinism_and_sampler_shapes():
  rng = np.random.default_rng(10)
  ids, seg = packed_batch(rng, 8, 20)
  valid = jnp.asarray(seg > 0)
  mk = np.ones((8, 20), bool)
  mk[:, ::3] = False
  mk[5] = False
  cfgs = {s: DiffusionConfig(mask_token_id=TINY_MASK, t_sampler=s) for s in SAMPLERS}

  @jax.jit
  def run(key):
    out = {s: dl.sample_noise(key, valid, dl.maskable_positions(valid, jnp.asarray(seg), c), c)
           for s, c in cfgs.items()}
    out["count_mk"] = dl.sample_noise(key, jnp.ones((8, 20), bool), jnp.asarray(mk), cfgs["count"])
    out["strat_full"] = dl.sample_noise(key, jnp.ones((8, 20), bool), jnp.ones((8, 20), bool), cfgs["stratified"])
    return out

  key = jax.random.key(42)
  a, b, c = run(jax.random.fold_in(key, 1)), run(jax.random.fold_in(key, 1)), run(jax.random.fold_in(key, 2))
  for s in SAMPLERS:
    for x, y in zip(a[s], b[s]):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert not np.array_equal(np.asarray(a[s][2]), np.asarray(c[s][2])), s
    assert not np.array_equal(np.asarray(a[s][1]), np.asarray(c[s][1])), s
  # stratified: one t in each stratum after a common rotation, so the sorted gaps are exactly 1/B
  t, p, _ = a["strat_full"]
  np.testing.assert_allclose(np.diff(np.sort(np.asarray(t))), 1 / 8, atol=1e-6)
  np.testing.assert_allclose(np.asarray(p), 1e-3 + (1 - 1e-3) * np.asarray(t), rtol=1e-6)
  # count: exactly l_b of the n_b maskable positions, p = l/n; rows without maskable positions untouched
  for out in (a, c):
    _, p, masked = out["count_mk"]
    masked, p = np.asarray(masked), np.asarray(p)
    n = mk.sum(1)
    assert not (masked & ~mk).any()
    for r in range(8):
      if n[r] == 0:
        assert masked[r].sum() == 0 and p[r] == 1.0
      else:
        assert 1 <= masked[r].sum() <= n[r]
        np.testing.assert_allclose(p[r], masked[r].sum() / n[r], rtol=1e-6)


def _pipeline(cfgs):
  def f(hidden, w, ids, seg, rng):
    out = {}
    for name, cfg in cfgs.items():
      k1, k2 = jax.random.split(rng)
      valid = dl.random_truncate(k1, seg > 0, cfg.random_length_prob)
      s = jnp.where(valid, seg, 0)
      mk = dl.maskable_positions(valid, s, cfg)
      t, p, masked = dl.sample_noise(k2, valid, mk, cfg)
      loss, metrics = dl.masked_diffusion_loss(hidden, w, ids, valid, masked, p, cfg, maskable_mask=mk, t=t)
      out[name] = (loss, metrics, masked, valid, p)
    return out

  return f


def test_sharded_equals_single_device():
  assert jax.device_count() == 8, "conftest must provide 8 fake CPU devices"
  rng = np.random.default_rng(11)
  b_, l_, d_, v_ = 16, 24, 8, 40
  ids = rng.integers(0, v_ - 1, size=(b_, l_)).astype(np.int32)
  seg = np.zeros((b_, l_), np.int32)
  lengths = [24, 24, 3, 0, 0, 0, 1, 24, 17, 5, 24, 24, 2, 0, 11, 24]  # unequal per shard; shard 2 is all padding
  for r, n in enumerate(lengths):
    seg[r, :n] = 1
    seg[r, n // 2:n] = 2  # two packed documents
  hidden = rng.normal(size=(b_, l_, d_)).astype(np.float32)
  w = rng.normal(size=(d_, v_)).astype(np.float32)
  mesh = shd.make_mesh({"data": 8})
  rows, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  key = jax.random.fold_in(jax.random.key(0), 17)
  # stratified: t_b depends on the row's *global* index b, the sampler where sharding could go wrong
  cfgs = {"stratified": DiffusionConfig(mask_token_id=v_ - 1, random_length_prob=0.5, ce_chunk_size=7)}
  single = jax.jit(_pipeline(cfgs))(hidden, w, ids, seg, key)
  args = (jax.device_put(hidden, rows), jax.device_put(w, rep), jax.device_put(ids, rows), jax.device_put(seg, rows),
          key)
  sharded = jax.jit(_pipeline(cfgs))(*args)
  with shd.activate(mesh):  # with the logical sharding constraints active too
    sharded_c = jax.jit(_pipeline(cfgs))(*args)
  for name in cfgs:
    assert len(sharded[name][2].sharding.device_set) == 8
    for out in (sharded[name], sharded_c[name]):
      np.testing.assert_array_equal(np.asarray(out[2]), np.asarray(single[name][2]))
      np.testing.assert_allclose(float(out[0]), float(single[name][0]), rtol=1e-5)
      for k in dl.METRIC_KEYS:
        np.testing.assert_allclose(float(out[1][k]), float(single[name][1][k]), rtol=1e-5, err_msg=k)
    # the global normaliser and the global NumPy reference
    loss, m, masked, valid, p = single[name]
    masked, valid = np.asarray(masked), np.asarray(valid)
    assert float(m["num_valid"]) == valid.sum() < (seg > 0).sum()
    assert not (masked & ~(valid & ~np_segment_start(np.where(valid, seg, 0)))).any()
    logits = np.einsum("bld,dv->blv", hidden.astype(np.float64), w.astype(np.float64))
    ref, _, _ = np_loss(logits, ids, valid, masked, np.asarray(p), shift=True, banned=(v_ - 1,))
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5)


# ------------------------------------------------------------------------------------------------------------------
# 9. Random length


def test_random_truncate_static_shapes():
  valid = np.ones((2000, 12), bool)
  valid[:, 10:] = False
  run = jax.jit(lambda key: (dl.random_truncate(key, valid, 1.0), dl.random_truncate(key, valid, 0.0),
                             dl.random_truncate(jax.random.fold_in(key, 1), valid, 0.5)))
  full, none, half = (np.asarray(x) for x in run(jax.random.key(0)))
  assert full.shape == (2000, 12)
  lengths = full.sum(1)
  # prefix form: valid[:ell] kept, everything after dropped; ell ~ U{1..12}
  np.testing.assert_array_equal(full, np.arange(12)[None] < lengths[:, None])
  assert lengths.min() == 1 and lengths.max() == 10
  np.testing.assert_allclose((lengths < 10).mean(), 9 / 12, atol=0.04)
  np.testing.assert_array_equal(none, valid)
  np.testing.assert_allclose((half.sum(1) < 10).mean(), 0.5 * 9 / 12, atol=0.04)


def test_random_length_in_wrapper(tiny_f32):
  rng = np.random.default_rng(12)
  b_, l_ = 4, 16
  ids = rng.integers(0, TINY_VOCAB - 1, size=(b_, l_)).astype(np.int32)
  seg = np.ones((b_, l_), np.int32)
  seg[2, 12:] = 0
  cfg = DiffusionConfig(mask_token_id=TINY_MASK, random_length_prob=1.0, t_sampler="count", ce_chunk_size=6)
  graphdef, state = nnx.split(tiny_f32)

  @jax.jit
  def run(st, batch, key):
    loss, m = dl.diffusion_loss(nnx.merge(graphdef, st), batch, key, cfg)
    k_trunc, k_noise = jax.random.split(key)  # replay the wrapper's noise
    valid = dl.random_truncate(k_trunc, batch["segment_ids"] > 0, 1.0)
    mk = dl.maskable_positions(valid, jnp.where(valid, batch["segment_ids"], 0), cfg)
    return loss, m, valid, dl.sample_noise(k_noise, valid, mk, cfg)[2]

  key = jax.random.key(5)
  loss, m, valid, masked = run(state, {"input_ids": ids, "segment_ids": seg}, key)
  valid, masked = np.asarray(valid), np.asarray(masked)
  assert valid.shape == masked.shape == (b_, l_)
  assert float(m["num_valid"]) == valid.sum() < (seg > 0).sum()
  assert not (masked & ~valid).any() and masked.any()
  # tokens beyond the cut are neither attended to nor scored: changing them changes nothing
  ids2 = np.where(valid, ids, (ids + 1) % (TINY_VOCAB - 1))
  loss2, m2, _, _ = run(state, {"input_ids": ids2, "segment_ids": seg}, key)
  np.testing.assert_allclose(float(loss2), float(loss), rtol=1e-5)
  np.testing.assert_allclose(float(m2["masked_ce"]), float(m["masked_ce"]), rtol=1e-5)


# ------------------------------------------------------------------------------------------------------------------
# 10. Chunking


def _naive_loss(hidden, w, targets, score, wts, num_valid, mask_id):
  """Unchunked JAX reference on already-aligned targets."""
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
  # shifted targets for the naive version, written out by hand
  targets = np.concatenate([ids[:, 1:], np.zeros((b_, 1), np.int32)], 1)
  score = np.concatenate([masked[:, 1:] & valid[:, :-1], np.zeros((b_, 1), bool)], 1)
  chunks = (4, 5, 64)  # divides L, does not divide L (padded internally), larger than L (one chunk)

  @jax.jit
  def run(h, ww):
    naive = jax.grad(_naive_loss, argnums=(0, 1))(h, ww, targets, score, 1 / p, float(valid.sum()), mask_id)
    out = {}
    for c in chunks:
      for fused in (False, True):
        cfg = DiffusionConfig(mask_token_id=mask_id, ce_chunk_size=c, random_length_prob=0.0)
        fn = lambda a, b, cfg=cfg, fused=fused: dl.masked_diffusion_loss(a, b, ids, valid, masked, p, cfg,
                                                                         fused=fused)
        out[c, fused] = jax.value_and_grad(fn, argnums=(0, 1), has_aux=True)(h, ww)
    return naive, out

  naive, out = run(jnp.asarray(hidden), jnp.asarray(w))
  for c, ((loss, m), grads) in out.items():
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5, err_msg=f"chunk={c}")
    np.testing.assert_allclose(float(m["masked_ce"]), ref_ce, rtol=1e-5)
    assert float(m["num_masked"]) == ref_n
    for g, gn in zip(grads, naive):
      np.testing.assert_allclose(np.asarray(g), np.asarray(gn), rtol=1e-4, atol=1e-6, err_msg=f"chunk={c}")
    # unscored positions get exactly zero gradient (padding, the last position, unmasked targets)
    gh = np.asarray(grads[0])
    assert np.all(gh[~score] == 0.0) and np.any(gh[score] != 0.0)


@pytest.mark.parametrize("fused", [False, True])
def test_chunking_never_materialises_full_logits(fused):
  """Compiled temp memory of loss + gradients stays a small multiple of one chunk's logits, far below [B, L, V] f32."""
  b_, l_, d_, v_, chunk = 2, 1024, 16, 4096, 32
  full, one_chunk = b_ * l_ * v_ * 4, b_ * chunk * v_ * 4
  ids = jnp.zeros((b_, l_), jnp.int32)
  valid = jnp.ones((b_, l_), bool)
  cfg = DiffusionConfig(mask_token_id=5, ce_chunk_size=chunk)
  fn = jax.value_and_grad(lambda h, w: dl.masked_diffusion_loss(h, w, ids, valid, valid, jnp.ones((b_,)), cfg,
                                                                fused=fused)[0], argnums=(0, 1))
  compiled = jax.jit(fn).lower(jax.ShapeDtypeStruct((b_, l_, d_), jnp.bfloat16),
                               jax.ShapeDtypeStruct((d_, v_), jnp.float32)).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  assert temp < min(full / 4, 8 * one_chunk), (temp, full, one_chunk)


@pytest.mark.parametrize("normalization", ["valid_tokens", "masked_tokens", "sequence"])
@pytest.mark.parametrize("weighting", ["elbo", "none"])
def test_fused_ce_equals_plain_path(normalization, weighting):
  """The training path's fused linear CE: same loss, metrics and gradients as the checkpointed chunks, for every
  normalisation and weighting (its coefficients are formed separately from the plain path's reductions), with
  packed segments, an empty row, a padded last chunk, the mask logit banned and a vocab limit."""
  rng = np.random.default_rng(21)
  b_, l_, d_, v_ = 4, 11, 8, 19
  ids, seg = packed_batch(rng, b_, l_, vocab=v_ - 3)
  seg[2] = 0
  valid = seg > 0
  masked = valid & ~np_segment_start(seg) & (rng.random((b_, l_)) < 0.6)
  p = rng.uniform(0.1, 1.0, size=b_).astype(np.float32)
  hidden = jnp.asarray(rng.normal(size=(b_, l_, d_)).astype(np.float32))
  w = jnp.asarray(rng.normal(size=(d_, v_)).astype(np.float32))
  cfg = DiffusionConfig(mask_token_id=v_ - 3, random_length_prob=0.0, ce_chunk_size=4, vocab_limit=v_ - 1,
                        normalization=normalization, weighting=weighting)

  @jax.jit
  def run(h, ww):
    res = []
    for fused in (False, True):
      fn = lambda a, b, fused=fused: dl.masked_diffusion_loss(a, b, ids, valid, masked, p, cfg, segment_ids=seg,
                                                              fused=fused)
      res.append(jax.value_and_grad(fn, argnums=(0, 1), has_aux=True)(h, ww))
    return res

  ((loss0, m0), g0), ((loss1, m1), g1) = run(hidden, w)
  assert float(m0["num_masked"]) > 0
  np.testing.assert_allclose(float(loss1), float(loss0), rtol=1e-6)
  for k in m0:
    np.testing.assert_allclose(float(m1[k]), float(m0[k]), rtol=1e-6, err_msg=k)
  for a, b in zip(g1, g0):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_normalizations_and_weighting_match_reference():
  rng = np.random.default_rng(14)
  b_, l_, v_ = 4, 9, 7
  ids, seg = packed_batch(rng, b_, l_, vocab=v_ - 1)
  seg[3] = 0
  valid = seg > 0
  masked = valid & ~np_segment_start(seg) & (rng.random((b_, l_)) < 0.7)
  p = rng.uniform(0.1, 1.0, size=b_).astype(np.float32)
  logits = rng.normal(size=(b_, l_, v_)).astype(np.float32)
  cfg0 = DiffusionConfig(mask_token_id=v_ - 1, random_length_prob=0.0, ce_chunk_size=4)
  combos = [(n, w) for n in ("valid_tokens", "masked_tokens", "sequence") for w in ("elbo", "none")]

  @jax.jit
  def run(lg):
    out = {f"{n}/{w}": dl.masked_diffusion_loss_from_logits(lg, ids, valid, masked, p,
                                                             cfg0.replace(normalization=n, weighting=w))[0]
           for n, w in combos}
    z = jnp.zeros((b_, l_), bool)  # an all-padding batch
    out["empty"] = dl.masked_diffusion_loss_from_logits(lg, ids, z, z, p, cfg0)
    return out

  out = run(jnp.asarray(logits))
  for n, w in combos:
    ref, _, _ = np_loss(logits, ids, valid, masked, p, shift=True, normalization=n, banned=(v_ - 1,), weighting=w)
    np.testing.assert_allclose(float(out[f"{n}/{w}"]), ref, rtol=1e-5, err_msg=f"{n}/{w}")
  loss, m = out["empty"]
  assert float(loss) == 0.0 and all(np.isfinite(float(v)) for v in m.values())


# ------------------------------------------------------------------------------------------------------------------
# 11. The full wrapper on the tiny model, under jit


def test_diffusion_loss_wrapper_jit_and_metrics(tiny_bf16):
  rng = np.random.default_rng(15)
  b_, l_ = 8, 48
  ids, seg = packed_batch(rng, b_, l_)
  cfg = DiffusionConfig(mask_token_id=TINY_MASK, random_length_prob=0.0, ce_chunk_size=16)

  @nnx.jit
  def run(model, batch, key):
    return dl.diffusion_loss(model, batch, key, cfg), dl.eval_at_mask_ratios(model, batch, key, cfg)

  batch = {"input_ids": jnp.asarray(ids), "segment_ids": jnp.asarray(seg)}
  (loss, m), ev = run(tiny_bf16, batch, jax.random.fold_in(jax.random.key(0), 3))
  assert set(m) == set(dl.METRIC_KEYS)
  assert all(v.dtype == jnp.float32 and v.shape == () for v in m.values())
  assert np.isfinite(float(loss)) and float(loss) > 0
  valid = seg > 0
  maskable = valid & ~np_segment_start(seg)
  assert float(m["num_valid"]) == valid.sum()
  assert 0 < float(m["num_masked"]) <= maskable.sum()
  np.testing.assert_allclose(float(m["realized_mask_rate"]), float(m["num_masked"]) / maskable.sum(), rtol=1e-6)
  assert 0 < float(m["mean_t"]) < 1
  assert abs(float(m["realized_mask_rate"]) - float(m["mean_t"])) < 0.15
  assert 1 <= float(m["max_weight"]) <= 1 / cfg.eps
  # near-zero-init model: CE close to log(V - 1) (the mask id is excluded)
  assert abs(float(m["masked_ce"]) - math.log(TINY_VOCAB - 1)) < 0.2
  # same step -> same loss; another step -> another mask
  (loss2, _), _ = run(tiny_bf16, batch, jax.random.fold_in(jax.random.key(0), 3))
  (loss3, m3), _ = run(tiny_bf16, batch, jax.random.fold_in(jax.random.key(0), 4))
  assert float(loss2) == float(loss)
  assert float(m3["num_masked"]) != float(m["num_masked"]) or float(loss3) != float(loss)
  # fixed-ratio evaluation
  assert set(ev) == {f"eval/{k}@{r}" for k in ("ce", "acc", "num_masked") for r in ("0.15", "0.5", "0.85")}
  counts = [float(ev[f"eval/num_masked@{r}"]) for r in ("0.15", "0.5", "0.85")]
  assert counts[0] < counts[1] < counts[2]
  for r, c in zip((0.15, 0.5, 0.85), counts):
    assert abs(c / maskable.sum() - r) < 0.1
    assert abs(float(ev[f"eval/ce@{r:g}"]) - math.log(TINY_VOCAB - 1)) < 0.2
    assert 0 <= float(ev[f"eval/acc@{r:g}"]) <= 1


def test_wrapper_rejects_out_of_vocab_mask_id(tiny_bf16):
  cfg = DiffusionConfig(mask_token_id=TINY_VOCAB)
  batch = {"input_ids": np.zeros((1, 4), np.int32), "segment_ids": np.ones((1, 4), np.int32)}
  with pytest.raises(ValueError, match="mask_token_id"):
    dl.diffusion_loss(tiny_bf16, batch, jax.random.key(0), cfg)
