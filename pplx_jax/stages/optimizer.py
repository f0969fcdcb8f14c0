"""AdamW with warmup-stable-decay (the paper's schedule) or cosine, global-norm clipping and a weight-decay mask."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

SCHEDULES = ("wsd", "cosine", "constant")


def learning_rate_schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """wsd: linear warmup, flat at the peak, then a decay over the last `decay_fraction` of the steps to
  `min_lr_ratio * lr` (linear or cosine-shaped); cosine: warmup then cosine to `min_lr_ratio * lr`."""
  peak, warmup = float(cfg.lr), int(cfg.warmup_steps)
  floor = peak * float(cfg.min_lr_ratio)
  warm = optax.linear_schedule(0.0, peak, max(warmup, 1))
  if cfg.schedule == "constant":
    rest = optax.constant_schedule(peak)
  elif cfg.schedule == "cosine":
    rest = optax.cosine_decay_schedule(peak, max(total_steps - warmup, 1), alpha=float(cfg.min_lr_ratio))
  elif cfg.schedule == "wsd":
    decay = max(int(round(total_steps * float(cfg.decay_fraction))), 1)
    stable = max(total_steps - warmup - decay, 0)
    shape = (optax.linear_schedule(peak, floor, decay) if cfg.decay_shape == "linear"
             else optax.cosine_decay_schedule(peak, decay, alpha=float(cfg.min_lr_ratio)))
    rest = optax.join_schedules([optax.constant_schedule(peak), shape], [stable])
  else:
    raise ValueError(f"optimizer.schedule={cfg.schedule!r} is not one of {SCHEDULES}")
  return optax.join_schedules([warm, rest], [warmup])


def decay_mask(params) -> object:
  """Decay matrices only: norms (1-D per layer, so ndim <= 2 when stacked) and the embedding are excluded."""

  def keep(path, x):
    name = jax.tree_util.keystr(path)
    if "norm" in name or "layernorm" in name:
      return False
    if "embed_tokens" in name:
      return False
    return x.ndim >= 2

  return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int) -> tuple[optax.GradientTransformation,
                                                                              optax.Schedule]:
  schedule = learning_rate_schedule(cfg, total_steps)
  parts = []
  if cfg.clip_norm and cfg.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(float(cfg.clip_norm)))
  parts.append(optax.adamw(schedule, b1=float(cfg.b1), b2=float(cfg.b2), eps=float(cfg.eps),
                           weight_decay=float(cfg.weight_decay), mask=decay_mask))
  return optax.chain(*parts), schedule


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      lr=5e-4, schedule="wsd", warmup_steps=2000, decay_fraction=0.1, decay_shape="linear", min_lr_ratio=0.0,
      b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip_norm=1.0))


def global_norm(tree) -> jax.Array:
  return optax.global_norm(jax.tree.map(lambda x: x.astype(jnp.float32), tree))


def _dict_path(path) -> tuple:
  """The dict keys of a pytree path: mu['layers']['q_proj'] and params['layers']['q_proj'] give the same tuple."""
  return tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))


def state_shardings(tx: optax.GradientTransformation, params):
  """Shardings for tx.init(params): every per-parameter buffer (AdamW's mu and nu) sharded like its parameter,
  scalars (the step count) and anything not shaped like a parameter replicated. `params` may be arrays or
  ShapeDtypeStructs that carry a sharding."""
  by_path = {_dict_path(k): (v.shape, v.sharding) for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  first = jax.tree.leaves(params)[0].sharding
  repl = (jax.sharding.NamedSharding(first.mesh, jax.sharding.PartitionSpec())
          if isinstance(first, jax.sharding.NamedSharding) else first)

  def sharding_of(path, leaf):
    shape, sh = by_path.get(_dict_path(path), (None, None))
    return sh if shape == leaf.shape else repl

  return jax.tree_util.tree_map_with_path(sharding_of, jax.eval_shape(tx.init, params))


def init_sharded(tx: optax.GradientTransformation, params):
  """tx.init(params) placed by `state_shardings`. A plain jax.jit(tx.init) returns the moments replicated
  (zeros_like does not inherit the input's sharding): two float32 copies of the whole model on every device (4.8 GB
  per device for Qwen3-0.6B on 8 devices instead of 0.6 GB; benchmarks/contrastive_scale.py)."""
  return jax.jit(tx.init, out_shardings=state_shardings(tx, params))(params)
