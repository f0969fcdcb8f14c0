"""Masked (absorbing-state) diffusion objective of pplx-embed's continued pretraining, as pure JAX functions.

The objective (diffusion.md §1, §7; paper.md §2) is the continuous-time masked-diffusion NELBO

    NELBO(x) = E_t E_{z_t} [ (1/t) * sum_i 1[z_t,i = MASK] * CE_i(z_t) ]  >=  -log p(x),

estimated per batch as sum_{b,i} masked_bi * w_b * ce_bi / D, with w_b = 1/p_b and D the number of real tokens.

Everything here is written over *global* arrays: there is no pmap/psum. Under `jax.jit` with batch-sharded inputs
the compiler inserts the collectives, so e.g. the stratified sampler's index b is the index in the global batch and
the normaliser D is the global token count.

Pieces (each usable alone, so tests can inject noise or logits):
  * `DiffusionConfig`           static, hashable settings (validated).
  * `random_truncate`           LLaDA's "1% random length" with static shapes (sets valid[ell:] = False per row).
  * `maskable_positions`        valid and, with the AR shift, not a segment start.
  * `sample_noise`              t, p and the mask: iid / stratified Bernoulli, or the RADD/LLaDA count sampler.
  * `masked_diffusion_loss`     chunked float32 cross-entropy from hidden states and the LM-head weight.
  * `masked_diffusion_loss_from_logits`  the same core fed with ready-made logits (mock models in tests).
  * `diffusion_loss`            the training loss of a `Qwen3` model on a {"input_ids", "segment_ids"} batch.
  * `eval_at_mask_ratios`       held-out masked CE / accuracy at fixed mask ratios.

Shift (the paper keeps the AR left-shift): the hidden state at position j predicts token j+1. The loss implements it
by shifting the *targets and masks* left by one (hidden states stay in place), so the last position predicts nothing,
and the first token of every segment (which would be predicted from another segment or from padding) is unmaskable.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from pplx_jax.core.sharding import constrain
from pplx_jax.models import precision

T_SAMPLERS = ("iid", "stratified", "count")
WEIGHTINGS = ("elbo", "none")
NORMALIZATIONS = ("valid_tokens", "masked_tokens", "sequence")

METRIC_KEYS = ("loss", "masked_ce", "masked_acc", "num_masked", "num_valid", "realized_mask_rate", "mean_t",
               "max_weight")


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
  """Settings of the masked-diffusion objective (static under jit: frozen and hashable).

  mask_token_id: id written over masked tokens (an unused row of Qwen3's vocabulary).
  eps: p = eps + (1 - eps) * t keeps the mask rate and the 1/p weight bounded (Bernoulli samplers).
  t_sampler: "stratified" (t_b = (u + b/B) mod 1 over the global batch), "iid" (t_b ~ U[0,1)), or "count"
    (l_b ~ U{1..n_b} maskable positions masked exactly, p_b = l_b / n_b).
  weighting: "elbo" (w = 1/p, the NELBO) or "none" (w = 1, MNTP-like; not a bound).
  normalization: "valid_tokens" (sum / #real tokens: the per-token NELBO), "masked_tokens" (sum / #masked; the
    DiffuLLaMA ratio estimator, about 2x the ELBO) or "sequence" (mean over rows of row sum / row #real tokens).
  shift: hidden position j predicts token j+1 (AR alignment kept, as in the paper).
  exclude_mask_logit: the mask id gets a -inf logit (it is never a target).
  random_length_prob: per-row probability of truncating a sequence to a random length ell ~ U{1..L}.
  ce_chunk_size: sequence positions per cross-entropy chunk. One chunk's float32 logits take
    local_batch * ce_chunk_size * V * 4 bytes (e.g. 4 x 1024 x 151936 x 4 B = 2.5 GB): lower it for big batches.
  vocab_limit: ids >= vocab_limit (unused padded rows of the embedding) get -inf logits; None keeps all.
  """

  mask_token_id: int
  eps: float = 1e-3
  t_sampler: str = "stratified"
  weighting: str = "elbo"
  normalization: str = "valid_tokens"
  shift: bool = True
  exclude_mask_logit: bool = True
  random_length_prob: float = 0.01
  ce_chunk_size: int = 1024
  vocab_limit: int | None = None

  def __post_init__(self):
    problems = []
    if isinstance(self.mask_token_id, bool) or not isinstance(self.mask_token_id, int) or self.mask_token_id < 0:
      problems.append(f"mask_token_id must be a non-negative int, got {self.mask_token_id!r}")
    if not isinstance(self.eps, (int, float)) or isinstance(self.eps, bool) or not (0.0 < float(self.eps) <= 1.0):
      problems.append(f"eps must be in (0, 1], got {self.eps!r}")
    for name, allowed in (("t_sampler", T_SAMPLERS), ("weighting", WEIGHTINGS), ("normalization", NORMALIZATIONS)):
      if getattr(self, name) not in allowed:
        problems.append(f"{name}={getattr(self, name)!r} is not one of {allowed}")
    for name in ("shift", "exclude_mask_logit"):
      if not isinstance(getattr(self, name), bool):
        problems.append(f"{name} must be a bool, got {getattr(self, name)!r}")
    prob = self.random_length_prob
    if not isinstance(prob, (int, float)) or isinstance(prob, bool) or not (0.0 <= float(prob) <= 1.0):
      problems.append(f"random_length_prob must be in [0, 1], got {prob!r}")
    if isinstance(self.ce_chunk_size, bool) or not isinstance(self.ce_chunk_size, int) or self.ce_chunk_size < 1:
      problems.append(f"ce_chunk_size must be a positive int, got {self.ce_chunk_size!r}")
    vl = self.vocab_limit
    if vl is not None and (isinstance(vl, bool) or not isinstance(vl, int) or vl < 1):
      problems.append(f"vocab_limit must be None or a positive int, got {vl!r}")
    if problems:
      raise ValueError("invalid diffusion config:\n  " + "\n  ".join(problems))

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "DiffusionConfig":
    d = dict(d.to_dict() if hasattr(d, "to_dict") else d)
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(known))
    if unknown:
      raise ValueError(f"unknown diffusion config keys {unknown}; known keys: {known}")
    if "mask_token_id" not in d:
      raise ValueError("diffusion config needs mask_token_id")
    return cls(**d)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def replace(self, **kw) -> "DiffusionConfig":
    return dataclasses.replace(self, **kw)


# ----------------------------------------------------------------------------------------------------------------
# Noise


def random_truncate(rng: jax.Array, valid_mask: jax.Array, prob: float) -> jax.Array:
  """With probability `prob` per row, draw ell ~ U{1..L} and set valid[ell:] = False. Shapes are unchanged."""
  valid_mask = valid_mask.astype(bool)
  if prob <= 0:
    return valid_mask
  b, length = valid_mask.shape
  k_do, k_len = jax.random.split(rng)
  do = jax.random.uniform(k_do, (b,)) < prob
  ell = jax.random.randint(k_len, (b,), 1, length + 1)
  keep = jnp.arange(length)[None, :] < jnp.where(do, ell, length)[:, None]
  return valid_mask & keep


def segment_starts(valid_mask: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
  """True at position 0, where the segment id changes, and at a valid token that follows an invalid one."""
  valid_mask = valid_mask.astype(bool)
  first = jnp.ones_like(valid_mask[:, :1])
  prev_invalid = jnp.concatenate([first, ~valid_mask[:, :-1]], axis=1)
  starts = prev_invalid
  if segment_ids is not None:
    changed = jnp.concatenate([first, segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    starts = starts | changed
  return starts


def maskable_positions(valid_mask: jax.Array, segment_ids: jax.Array | None, cfg: DiffusionConfig) -> jax.Array:
  """Positions that may be masked: valid, and (with the shift) not a segment start, since the prediction for
  token i comes from position i-1, which must hold a token of the same segment."""
  valid_mask = valid_mask.astype(bool)
  if not cfg.shift:
    return valid_mask
  return valid_mask & ~segment_starts(valid_mask, segment_ids)


def sample_noise(rng: jax.Array, valid_mask: jax.Array, maskable_mask: jax.Array,
                 cfg: DiffusionConfig) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(t [B] f32, p [B] f32, masked [B, L] bool). Only maskable (hence valid) positions are ever masked.

  iid / stratified: p_b = eps + (1 - eps) t_b, masked = (r < p_b) & maskable with r ~ U[0,1) per position.
  count: n_b = #maskable, l_b ~ U{1..n_b}; the l_b maskable positions with the smallest uniform scores are masked
    (ranked by a sort, so shapes are static); t_b = p_b = l_b / n_b (rows with n_b = 0: nothing masked, p_b = 1).
  The caller folds the step (and anything else that must decorrelate masks) into `rng`.
  """
  valid_mask = valid_mask.astype(bool)
  maskable = maskable_mask.astype(bool) & valid_mask
  b, length = maskable.shape
  k_t, k_r = jax.random.split(rng)
  if cfg.t_sampler in ("iid", "stratified"):
    if cfg.t_sampler == "iid":
      t = jax.random.uniform(k_t, (b,), jnp.float32)
    else:
      # b / B over the *global* batch: under jit with a sharded batch, arange(B) is the global row index.
      u = jax.random.uniform(k_t, (), jnp.float32)
      t = jnp.mod(u + jnp.arange(b, dtype=jnp.float32) / b, 1.0)
    p = cfg.eps + (1.0 - cfg.eps) * t
    r = jax.random.uniform(k_r, (b, length), jnp.float32)
    masked = (r < p[:, None]) & maskable
    return t.astype(jnp.float32), p.astype(jnp.float32), masked
  if cfg.t_sampler == "count":
    n = jnp.sum(maskable, axis=1, dtype=jnp.int32)
    u = jax.random.uniform(k_t, (b,), jnp.float32)
    count = jnp.minimum(jnp.floor(u * n).astype(jnp.int32) + 1, n)  # U{1..n}; 0 when n = 0
    scores = jnp.where(maskable, jax.random.uniform(k_r, (b, length), jnp.float32), 2.0)
    # rank of each position among its row's scores (argsort is stable; exact count even with tied floats)
    order = jnp.argsort(scores, axis=1)
    ranks = jnp.argsort(order, axis=1)
    masked = (ranks < count[:, None]) & maskable
    p = jnp.where(n > 0, count.astype(jnp.float32) / jnp.maximum(n, 1).astype(jnp.float32), 1.0)
    return p, p, masked
  raise ValueError(f"unknown t_sampler {cfg.t_sampler!r}")


def fixed_ratio_noise(rng: jax.Array, maskable_mask: jax.Array, ratio: float) -> tuple[jax.Array, jax.Array]:
  """Evaluation noise: each maskable position masked with probability `ratio`; p = ratio for every row."""
  maskable = maskable_mask.astype(bool)
  r = jax.random.uniform(rng, maskable.shape, jnp.float32)
  p = jnp.full((maskable.shape[0],), ratio, jnp.float32)
  return p, (r < ratio) & maskable


# ----------------------------------------------------------------------------------------------------------------
# Loss


def _masked_logits(logits: jax.Array, cfg: DiffusionConfig) -> jax.Array:
  """float32 logits with the banned ids (the mask id, padded vocabulary rows) at -inf."""
  logits = constrain(logits.astype(jnp.float32), ("act_batch", "act_length", "act_vocab"))
  vocab = logits.shape[-1]
  iota = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 2)
  banned = None
  if cfg.exclude_mask_logit and cfg.mask_token_id < vocab:
    banned = iota == cfg.mask_token_id
  if cfg.vocab_limit is not None and cfg.vocab_limit < vocab:
    over = iota >= cfg.vocab_limit
    banned = over if banned is None else banned | over
  return logits if banned is None else jnp.where(banned, -jnp.inf, logits)


def _chunk_ce(logits: jax.Array, targets: jax.Array, score: jax.Array, cfg: DiffusionConfig):
  """Per-position CE and correctness for one chunk. logits [B, C, V] (any float dtype) -> ([B, C] f32, [B, C] bool).
  Unscored positions give ce = 0 (never inf/NaN, whatever their target)."""
  logits = _masked_logits(logits, cfg)
  iota = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 2)
  lse = jax.nn.logsumexp(logits, axis=-1)
  # target logit by a fused compare-select-reduce (no gather along a possibly vocab-sharded axis)
  target_logit = jnp.sum(jnp.where(iota == targets[..., None], logits, 0.0), axis=-1)
  ce = jnp.where(score, lse - target_logit, 0.0)
  correct = (target_logit >= jnp.max(logits, axis=-1)) & score  # as the fused path counts it (no argmax pass)
  return ce, correct


def _chunked_ce(xs: jax.Array, logits_fn: Callable[[jax.Array], jax.Array], targets: jax.Array, score: jax.Array,
                cfg: DiffusionConfig) -> tuple[jax.Array, jax.Array]:
  """CE over [B, L] positions, `ce_chunk_size` sequence positions at a time (lax.map over chunks; each chunk's
  logits are recomputed in the backward pass by jax.checkpoint, so at most one chunk of logits is alive)."""
  b, length = targets.shape
  chunk = min(cfg.ce_chunk_size, length)
  n_chunks = -(-length // chunk)
  pad = n_chunks * chunk - length

  def padded(a, value):
    if pad == 0:
      return a
    widths = [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2)
    return jnp.pad(a, widths, constant_values=value)

  def to_chunks(a):  # [B, Lp, ...] -> [n_chunks, B, C, ...]
    a = a.reshape((b, n_chunks, chunk) + a.shape[2:])
    return jnp.moveaxis(a, 1, 0)

  xs_c = to_chunks(padded(xs, 0))
  tg_c = to_chunks(padded(targets.astype(jnp.int32), 0))
  sc_c = to_chunks(padded(score, False))

  def body(args):
    x, tg, sc = args
    return _chunk_ce(logits_fn(x), tg, sc, cfg)

  if n_chunks == 1:  # outside a loop, prevent_cse keeps XLA from merging the recomputation with the forward pass
    ce, correct = jax.checkpoint(body)((xs_c[0], tg_c[0], sc_c[0]))
    return ce[:, :length], correct[:, :length]
  ce, correct = jax.lax.map(jax.checkpoint(body, prevent_cse=False), (xs_c, tg_c, sc_c))
  ce = jnp.moveaxis(ce, 0, 1).reshape(b, n_chunks * chunk)[:, :length]
  correct = jnp.moveaxis(correct, 0, 1).reshape(b, n_chunks * chunk)[:, :length]
  return ce, correct


def _targets_and_scores(token_ids: jax.Array, valid_mask: jax.Array, masked: jax.Array, cfg: DiffusionConfig,
                        segment_ids: jax.Array | None = None):
  """Targets and scored positions in the coordinates of the predicting position (hidden/logit index)."""
  valid = valid_mask.astype(bool)
  masked = masked.astype(bool) & valid
  token_ids = token_ids.astype(jnp.int32)
  if not cfg.shift:
    return token_ids, masked
  # position j predicts token j+1; the last position predicts nothing; a predictor must itself be a real token
  # (and, when segment ids are given, of the same segment).
  ok = masked[:, 1:] & valid[:, :-1]
  if segment_ids is not None:
    ok = ok & (segment_ids[:, 1:] == segment_ids[:, :-1])
  targets = jnp.concatenate([token_ids[:, 1:], jnp.zeros_like(token_ids[:, :1])], axis=1)
  score = jnp.concatenate([ok, jnp.zeros_like(masked[:, :1])], axis=1)
  return targets, score


def _default_maskable(valid_mask: jax.Array, cfg: DiffusionConfig) -> jax.Array:
  return maskable_positions(valid_mask, None, cfg)


def _ce_coefficients(valid: jax.Array, score: jax.Array, p: jax.Array, cfg: DiffusionConfig):
  """(w [B], coeff [B, L]) with loss = sum(coeff * ce): the loss is linear in the per-position CE, and the
  coefficients (weights 1/p, the normaliser) do not depend on the parameters."""
  p = jnp.asarray(p, jnp.float32)
  if cfg.weighting == "elbo":
    w = jnp.where(p > 0, 1.0 / jnp.where(p > 0, p, 1.0), 0.0)
  else:
    w = jnp.ones_like(p)
  scf = score.astype(jnp.float32)
  row_valid = jnp.sum(valid, axis=1, dtype=jnp.float32)
  if cfg.normalization == "valid_tokens":
    per_row = w / jnp.maximum(jnp.sum(row_valid), 1.0)
  elif cfg.normalization == "masked_tokens":
    per_row = w / jnp.maximum(jnp.sum(scf), 1.0)
  elif cfg.normalization == "sequence":
    has = row_valid > 0
    per_row = jnp.where(has, w / jnp.maximum(row_valid, 1.0), 0.0) / jnp.maximum(jnp.sum(has, dtype=jnp.float32), 1.0)
  else:
    raise ValueError(f"unknown normalization {cfg.normalization!r}")
  return w, per_row[:, None] * scf


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def fused_weighted_ce(hidden: jax.Array, w: jax.Array, targets: jax.Array, coeff: jax.Array, score: jax.Array,
                      cfg: DiffusionConfig):
  """(sum(coeff * ce), sum(ce), sum(correct)) over [B, L] positions from hidden [B, L, D] and the head w [D, V].

  A "fused linear cross-entropy" for training: chunk by chunk, the forward pass also forms softmax - onehot and
  from it d/d hidden and d/d w, so the backward pass only scales them. That is 3 LM-head matmuls per chunk instead
  of 4 (forward, checkpointed recompute, two gradients) and one softmax instead of two (17-22% faster CPU steps,
  benchmarks/README.md). `coeff` is treated as a constant (no gradient flows into it); evaluation, which needs
  no gradient, uses the plain chunked path instead.
  """
  out, _ = _fused_ce_fwd(hidden, w, targets, coeff, score, cfg)
  return out


def _fused_ce_fwd(hidden, w, targets, coeff, score, cfg):
  b, length, d = hidden.shape
  vocab = w.shape[1]
  chunk = min(cfg.ce_chunk_size, length)
  n_chunks = -(-length // chunk)
  pad = n_chunks * chunk - length

  def to_chunks(a, value):  # [B, L, ...] -> [n_chunks, B, C, ...]
    if pad:
      a = jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2), constant_values=value)
    return jnp.moveaxis(a.reshape((b, n_chunks, chunk) + a.shape[2:]), 1, 0)

  mixed = precision.is_mixed(hidden.dtype)
  wc = precision.row_major(w.astype(hidden.dtype)) if mixed else w.astype(hidden.dtype)

  def body(dw, args):
    x, tg, cf, sc = args
    rows = x.shape[:2]
    if mixed:  # 2-D dots over flattened tokens, the weight gradient in the fast layout (models/precision.py)
      logits = precision.dot(x.reshape(-1, d), wc).reshape(rows + (vocab,))
    else:
      logits = jnp.einsum("bcd,dv->bcv", x, wc, preferred_element_type=jnp.float32)
    logits = _masked_logits(logits, cfg)
    m = jnp.max(logits, axis=-1, keepdims=True)
    e = jnp.exp(logits - m)
    z = jnp.sum(e, axis=-1, keepdims=True)
    onehot = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 2) == tg[..., None]
    target_logit = jnp.sum(jnp.where(onehot, logits, 0.0), axis=-1)
    ce = jnp.where(sc, (m + jnp.log(z))[..., 0] - target_logit, 0.0)
    # "the target is a largest logit" from the max already at hand (an argmax is one more pass over [B, C, V])
    correct = (target_logit >= m[..., 0]) & sc
    dlogits = (cf[..., None] * (e / z - onehot.astype(jnp.float32))).astype(x.dtype)
    if mixed:
      dl = dlogits.reshape(-1, vocab)
      dx = precision.dot(dl, wc, (1, 1)).astype(x.dtype).reshape(x.shape)
      return dw + precision.weight_grad(x.reshape(-1, d), dl), (ce, correct, dx)
    dx = jnp.einsum("bcv,dv->bcd", dlogits, wc, preferred_element_type=jnp.float32).astype(x.dtype)
    # one contracting token dim (b*c): a plain A^T B dot that reads both operands in place
    dw = dw + jnp.einsum("td,tv->dv", x.reshape(-1, d), dlogits.reshape(-1, vocab),
                         preferred_element_type=jnp.float32)
    return dw, (ce, correct, dx)

  xs = (to_chunks(hidden, 0), to_chunks(targets.astype(jnp.int32), 0), to_chunks(coeff.astype(jnp.float32), 0.0),
        to_chunks(score, False))
  dw0 = jnp.zeros((d, vocab), jnp.float32)
  if n_chunks == 1:
    dw, (ce, correct, dx) = body(dw0, jax.tree.map(lambda a: a[0], xs))
    ce, correct, dx = ce[None], correct[None], dx[None]
  else:
    dw, (ce, correct, dx) = jax.lax.scan(body, dw0, xs)
  unchunk = lambda a: jnp.moveaxis(a, 0, 1).reshape((b, n_chunks * chunk) + a.shape[3:])[:, :length]
  ce, correct, dx = unchunk(ce), unchunk(correct), unchunk(dx)
  out = (jnp.sum(ce * coeff), jnp.sum(ce), jnp.sum(correct, dtype=jnp.float32))
  if mixed:
    # A tied head's gradient is transposed back to the table's [V, D] after this; XLA would fold that transpose into
    # the one-chunk weight-gradient dot as a 16-bit dot its CPU runtime cannot execute ("Unsupported element type
    # for DotThunk"). The barrier keeps the dot as written (a 113 MB float32 transpose at SmolLM2's vocabulary).
    dw = jax.lax.optimization_barrier(dw)
  return out, (dx, dw.astype(w.dtype))


def _fused_ce_bwd(cfg, res, g):
  dx, dw = res
  g_loss = g[0]  # sum(ce) and sum(correct) are metrics: their cotangents are ignored
  return g_loss.astype(dx.dtype) * dx, g_loss.astype(dw.dtype) * dw, None, None, None


fused_weighted_ce.defvjp(_fused_ce_fwd, _fused_ce_bwd)


def _loss_core(xs, logits_fn, token_ids, valid_mask, masked, p, cfg: DiffusionConfig, maskable_mask=None, t=None,
               segment_ids=None, head_weight=None):
  """Shared by every entry point. With `head_weight`, xs are hidden states and the loss goes through
  `fused_weighted_ce`; otherwise `logits_fn(xs chunk)` gives logits for the plain checkpointed chunks."""
  sg = jax.lax.stop_gradient
  valid = valid_mask.astype(bool)
  masked = masked.astype(bool) & valid
  targets, score = _targets_and_scores(token_ids, valid, masked, cfg, segment_ids)
  w, coeff = _ce_coefficients(valid, score, p, cfg)
  if head_weight is not None:
    loss, ce_sum, correct_sum = fused_weighted_ce(xs, head_weight, targets, sg(coeff), score, cfg)
  else:
    ce, correct = _chunked_ce(xs, logits_fn, targets, score, cfg)
    loss, ce_sum, correct_sum = jnp.sum(ce * coeff), jnp.sum(ce), jnp.sum(correct, dtype=jnp.float32)

  scf = score.astype(jnp.float32)
  row_valid = jnp.sum(valid, axis=1, dtype=jnp.float32)
  num_masked = jnp.sum(scf)
  maskable = _default_maskable(valid, cfg) if maskable_mask is None else maskable_mask.astype(bool) & valid
  rows_valid = row_valid > 0
  t = jnp.asarray(p, jnp.float32) if t is None else jnp.asarray(t, jnp.float32)
  rows_masked = jnp.sum(scf, axis=1) > 0
  metrics = {
      "loss": loss,
      "masked_ce": ce_sum / jnp.maximum(num_masked, 1.0),
      "masked_acc": correct_sum / jnp.maximum(num_masked, 1.0),
      "num_masked": num_masked,
      "num_valid": jnp.sum(row_valid),
      "realized_mask_rate": jnp.sum(masked & maskable, dtype=jnp.float32)
                            / jnp.maximum(jnp.sum(maskable, dtype=jnp.float32), 1.0),
      "mean_t": jnp.sum(jnp.where(rows_valid, t, 0.0)) / jnp.maximum(jnp.sum(rows_valid, dtype=jnp.float32), 1.0),
      "max_weight": jnp.max(jnp.where(rows_masked, w, 0.0)),
  }
  metrics = {k: sg(v.astype(jnp.float32)) for k, v in metrics.items()}
  return loss.astype(jnp.float32), metrics


def masked_diffusion_loss(hidden: jax.Array, head_weight: jax.Array, token_ids: jax.Array, valid_mask: jax.Array,
                          masked: jax.Array, p: jax.Array, cfg: DiffusionConfig, *,
                          maskable_mask: jax.Array | None = None, t: jax.Array | None = None,
                          segment_ids: jax.Array | None = None,
                          fused: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Weighted masked cross-entropy from final hidden states, chunked over the sequence.

  hidden: [B, L, D] in the compute dtype; head_weight: [D, V] (cast to hidden's dtype, float32 accumulation).
  token_ids: clean ids [B, L]; valid_mask: real tokens [B, L]; masked: [B, L] (positions of `token_ids` that were
  replaced by the mask id); p: [B] masking probabilities (weights 1/p under "elbo").
  maskable_mask / t only feed the metrics realized_mask_rate / mean_t (defaults: the shift-aware valid positions / p).
  segment_ids (optional, with the shift): a masked token is scored only if its predictor is in the same segment
  (masks drawn from `maskable_positions` already guarantee it; this guards injected masks).
  fused: use `fused_weighted_ce` (for training: it forms the gradients in the forward pass, so it is only worth it
  under differentiation); same loss and metrics.
  Returns (loss f32 scalar, metrics dict of f32 scalars, gradient-stopped).
  """
  if hidden.ndim != 3 or head_weight.ndim != 2 or hidden.shape[-1] != head_weight.shape[0]:
    raise ValueError(f"hidden {hidden.shape} and head_weight {head_weight.shape} must be [B, L, D] and [D, V]")
  if hidden.shape[:2] != token_ids.shape:
    raise ValueError(f"hidden {hidden.shape} does not match token_ids {token_ids.shape}")
  hidden = constrain(hidden, ("act_batch", "act_length", "act_embed"))
  w = head_weight.astype(hidden.dtype)

  def logits_fn(h):
    return jnp.einsum("bcd,dv->bcv", h, w, preferred_element_type=jnp.float32)

  return _loss_core(hidden, logits_fn, token_ids, valid_mask, masked, p, cfg, maskable_mask, t, segment_ids,
                    head_weight=head_weight if fused else None)


def masked_diffusion_loss_from_logits(logits: jax.Array, token_ids: jax.Array, valid_mask: jax.Array,
                                      masked: jax.Array, p: jax.Array, cfg: DiffusionConfig, *,
                                      maskable_mask: jax.Array | None = None, t: jax.Array | None = None,
                                      segment_ids: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Same loss from ready-made logits [B, L, V] (logits[:, j] scores target j, or j+1 with the shift)."""
  if logits.ndim != 3 or logits.shape[:2] != token_ids.shape:
    raise ValueError(f"logits {logits.shape} must be [B, L, V] with [B, L] = token_ids {token_ids.shape}")
  return _loss_core(logits, lambda x: x, token_ids, valid_mask, masked, p, cfg, maskable_mask, t, segment_ids)


# ----------------------------------------------------------------------------------------------------------------
# Model-level wrappers


def _check_mask_id(model, cfg: DiffusionConfig) -> None:
  vocab = getattr(getattr(model, "cfg", None), "vocab_size", None)
  if vocab is not None and cfg.mask_token_id >= vocab:
    raise ValueError(f"mask_token_id={cfg.mask_token_id} is outside the model's vocabulary of {vocab}")


def diffusion_loss(model, batch: Mapping[str, jax.Array], rng: jax.Array,
                   cfg: DiffusionConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Training loss of `model` (a bidirectional `Qwen3`) on {"input_ids": [B, L] int32, "segment_ids": [B, L] int32}.

  segment_ids: 0 on padding, > 0 on real tokens, a distinct id per packed document. `rng` must already have the
  step folded in. Truncation -> maskable positions -> noise -> forward on the noised ids -> chunked loss.
  """
  _check_mask_id(model, cfg)
  ids = jnp.asarray(batch["input_ids"], jnp.int32)
  seg = jnp.asarray(batch["segment_ids"], jnp.int32)
  k_trunc, k_noise = jax.random.split(rng)
  valid = seg > 0
  if cfg.random_length_prob > 0:
    valid = random_truncate(k_trunc, valid, cfg.random_length_prob)
  seg = jnp.where(valid, seg, 0)
  maskable = maskable_positions(valid, seg, cfg)
  t, p, masked = sample_noise(k_noise, valid, maskable, cfg)
  noisy = jnp.where(masked, jnp.int32(cfg.mask_token_id), ids)
  hidden = model(noisy, segment_ids=seg)
  return masked_diffusion_loss(hidden, model.lm_head_weight(), ids, valid, masked, p, cfg,
                               maskable_mask=maskable, t=t, segment_ids=seg, fused=True)


def eval_at_mask_ratios(model, batch: Mapping[str, jax.Array], rng: jax.Array, cfg: DiffusionConfig,
                        ratios: Sequence[float] = (0.15, 0.5, 0.85)) -> dict[str, jax.Array]:
  """Held-out masked CE and accuracy at fixed mask ratios (no truncation, p = ratio for every row).

  One uniform draw serves every ratio, so the masks are nested (lower-variance comparisons across ratios).
  Keys: "eval/ce@{r:g}", "eval/acc@{r:g}", "eval/num_masked@{r:g}".
  """
  _check_mask_id(model, cfg)
  for r in ratios:
    if not (0.0 < float(r) <= 1.0):
      raise ValueError(f"mask ratio {r!r} must be in (0, 1]")
  ids = jnp.asarray(batch["input_ids"], jnp.int32)
  seg = jnp.asarray(batch["segment_ids"], jnp.int32)
  valid = seg > 0
  maskable = maskable_positions(valid, seg, cfg)
  head = model.lm_head_weight()
  out = {}
  for r in ratios:
    p, masked = fixed_ratio_noise(rng, maskable, float(r))
    noisy = jnp.where(masked, jnp.int32(cfg.mask_token_id), ids)
    hidden = model(noisy, segment_ids=seg)
    _, m = masked_diffusion_loss(hidden, head, ids, valid, masked, p, cfg, maskable_mask=maskable, segment_ids=seg)
    tag = f"{float(r):g}"
    out[f"eval/ce@{tag}"] = m["masked_ce"]
    out[f"eval/acc@{tag}"] = m["masked_acc"]
    out[f"eval/num_masked@{tag}"] = m["num_masked"]
  return out


__all__ = [
    "DiffusionConfig", "METRIC_KEYS", "NORMALIZATIONS", "T_SAMPLERS", "WEIGHTINGS", "diffusion_loss",
    "eval_at_mask_ratios", "fixed_ratio_noise", "fused_weighted_ce", "masked_diffusion_loss", "masked_diffusion_loss_from_logits",
    "maskable_positions", "random_truncate", "sample_noise", "segment_starts",
]
