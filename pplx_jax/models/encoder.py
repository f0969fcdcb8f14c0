"""The encoder: one definition for every stage (diffusion, contrastive, contextual) and every decoder family.

Computes the same function as transformers' `Qwen3Model`, `LlamaModel` and `Qwen2Model` (with the LM head, their
`*ForCausalLM`): token embedding, pre-norm blocks of [RMSNorm -> GQA attention (per-head q/k RMSNorm for Qwen3,
q/k/v biases for Qwen2) with RoPE -> residual, RMSNorm -> SwiGLU -> residual], final RMSNorm. The families differ
only by `ModelConfig` switches (see `pplx_jax.core.model_config`). With `attention="bidirectional"` only padding and
segment boundaries are masked — the pplx-embed encoder.

Parameters carry Hugging Face's names (so the conversion map reads like a table) and are stacked over layers with a
leading `layers` axis; the forward pass scans a pure per-layer function over that axis.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.core import spmd as flax_spmd
from jax.ad_checkpoint import checkpoint_name
from jax.sharding import PartitionSpec as P

from pplx_jax.core.model_config import ModelConfig
from pplx_jax.core.sharding import constrain, mesh_axes, to_dtype
from pplx_jax.models import attention as attn_lib
from pplx_jax.models import precision

# name -> (shape function of the config, logical axes, initializer kind). Qwen3's parameters first, in the order their
# random init draws keys (so a seed gives the same Qwen3 weights as before the other families existed).
LAYER_PARAMS = {
    "q_proj": (lambda c: (c.hidden_size, c.num_heads, c.head_dim), ("embed", "q_heads", "head_dim"), "normal"),
    "k_proj": (lambda c: (c.hidden_size, c.num_kv_heads, c.head_dim), ("embed", "kv_heads", "head_dim"), "normal"),
    "v_proj": (lambda c: (c.hidden_size, c.num_kv_heads, c.head_dim), ("embed", "kv_heads", "head_dim"), "normal"),
    "o_proj": (lambda c: (c.num_heads, c.head_dim, c.hidden_size), ("q_heads", "head_dim", "embed"), "normal"),
    "q_norm": (lambda c: (c.head_dim,), ("norm",), "ones"),
    "k_norm": (lambda c: (c.head_dim,), ("norm",), "ones"),
    "input_layernorm": (lambda c: (c.hidden_size,), ("norm",), "ones"),
    "post_attention_layernorm": (lambda c: (c.hidden_size,), ("norm",), "ones"),
    "gate_proj": (lambda c: (c.hidden_size, c.mlp_dim), ("embed", "mlp"), "normal"),
    "up_proj": (lambda c: (c.hidden_size, c.mlp_dim), ("embed", "mlp"), "normal"),
    "down_proj": (lambda c: (c.mlp_dim, c.hidden_size), ("mlp", "embed"), "normal"),
    "q_bias": (lambda c: (c.num_heads, c.head_dim), ("q_heads", "head_dim"), "zeros"),
    "k_bias": (lambda c: (c.num_kv_heads, c.head_dim), ("kv_heads", "head_dim"), "zeros"),
    "v_bias": (lambda c: (c.num_kv_heads, c.head_dim), ("kv_heads", "head_dim"), "zeros"),
    "o_bias": (lambda c: (c.hidden_size,), ("norm",), "zeros"),
}


def layer_param_names(cfg: ModelConfig) -> tuple[str, ...]:
  """The per-layer parameters this config has (LAYER_PARAMS order)."""
  skip = set()
  if not cfg.qk_norm:
    skip |= {"q_norm", "k_norm"}
  if not cfg.qkv_bias:
    skip |= {"q_bias", "k_bias", "v_bias"}
  if not cfg.o_bias:
    skip.add("o_bias")
  return tuple(n for n in LAYER_PARAMS if n not in skip)

INIT_STD = 0.02  # transformers' Qwen3 initializer_range


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
  """RMSNorm in float32, cast back before the scale, exactly as transformers' Qwen3RMSNorm."""
  dtype = x.dtype
  x32 = x.astype(jnp.float32)
  x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return weight.astype(dtype) * x32.astype(dtype)


def rope_frequencies(cfg: ModelConfig) -> jax.Array:
  """[head_dim / 2] inverse frequencies, with transformers' `rope_type` scaling (modeling_rope_utils.py)."""
  hd = cfg.head_dim
  inv_freq = 1.0 / (cfg.rope_theta ** (jnp.arange(0, hd, 2, dtype=jnp.float32) / hd))
  if cfg.rope_type == "linear":
    return inv_freq / cfg.rope_factor
  if cfg.rope_type == "llama3":  # _compute_llama3_parameters
    factor, low, high = cfg.rope_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
    old_len = cfg.rope_original_max_positions
    wavelen = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
    return jnp.where(medium, smoothed, scaled)
  return inv_freq


def rope_tables(positions: jax.Array, cfg: ModelConfig) -> tuple[jax.Array, jax.Array]:
  """cos/sin [B, S, head_dim] in float32 (rotate-half layout: the two halves share frequencies)."""
  inv_freq = rope_frequencies(cfg)
  freqs = positions.astype(jnp.float32)[..., None] * inv_freq
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """x: [B, S, heads, head_dim]."""
  cos = cos[:, :, None, :].astype(x.dtype)
  sin = sin[:, :, None, :].astype(x.dtype)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return x * cos + rotated * sin


def segment_positions(segment_ids: jax.Array) -> jax.Array:
  """Position of each token within its segment (packed rows restart at 0; right padding keeps arange)."""
  s = segment_ids.shape[-1]
  idx = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), segment_ids.shape)
  is_start = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], 1)
  start = jax.lax.cummax(jnp.where(is_start, idx, 0), axis=1)
  return idx - start


def decoder_layer(p: dict[str, jax.Array], x: jax.Array, cos: jax.Array, sin: jax.Array, segment_ids: jax.Array,
                  cfg: ModelConfig) -> jax.Array:
  """One block as a pure function of its parameters (one slice of the stacked layer params).

  The projections run over flattened tokens [B*S, D]: with [B, S, D] operands autodiff's weight gradients contract
  two dims (b, s) and XLA:CPU materialises a transposed copy of every [B*S, F] activation gradient; with one token
  dim each weight gradient is a plain A^T B dot (23-27% faster CPU steps, benchmarks/README.md). Every dot goes
  through `precision.matmul`: under a 16-bit compute dtype the projections take 16-bit operands and return float32
  (or the compute dtype: `model.projection_dtype`), and x (the residual stream) is `model.residual_dtype`.
  """
  cdt, pdt = to_dtype(cfg.compute_dtype), held_dtype(cfg.projection_dtype, cfg)
  mm = lambda a, name, in_dims=1: precision.matmul(a, p[name], cdt, in_dims, pdt)
  b, s, d = x.shape
  t = b * s
  n, kv, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  h = rms_norm(x, p["input_layernorm"], cfg.rms_norm_eps).reshape(t, d)
  q, k, v = mm(h, "q_proj"), mm(h, "k_proj"), mm(h, "v_proj")
  if cfg.qkv_bias:  # Qwen2
    q, k, v = q + _bias(p, "q_bias", q, cdt), k + _bias(p, "k_bias", k, cdt), v + _bias(p, "v_bias", v, cdt)
  q, k, v = q.reshape(b, s, n, hd), k.reshape(b, s, kv, hd), v.reshape(b, s, kv, hd)
  q = constrain(q, ("act_batch", "act_length", "act_heads", None))
  k = constrain(k, ("act_batch", "act_length", "act_kv_heads", None))
  v = constrain(v, ("act_batch", "act_length", "act_kv_heads", None))
  if cfg.qk_norm:  # Qwen3's QK-norm: per head, over head_dim, before the rotary embedding.
    q, k = rms_norm(q, p["q_norm"], cfg.rms_norm_eps), rms_norm(k, p["k_norm"], cfg.rms_norm_eps)
  q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
  q, k, v = (precision.operand(a, cdt) for a in (q, k, v))
  a = attn_lib.dot_product_attention(q, k, v, segment_ids, causal=cfg.causal, impl=cfg.attention_impl)
  a = checkpoint_name(a, "attn_out")
  o = mm(a.reshape(t, n, hd), "o_proj", 2)
  if cfg.o_bias:
    o = o + _bias(p, "o_bias", o, cdt)
  x = constrain(x + o.reshape(b, s, d).astype(x.dtype), ("act_batch", "act_length", "act_embed"))
  h = rms_norm(x, p["post_attention_layernorm"], cfg.rms_norm_eps).reshape(t, d)
  mlp = jax.nn.silu(mm(h, "gate_proj")) * mm(h, "up_proj")
  mlp = constrain(mlp.reshape(b, s, -1), ("act_batch", "act_length", "act_mlp"))
  x = x + mm(mlp.reshape(t, -1), "down_proj").reshape(b, s, d).astype(x.dtype)
  return constrain(x, ("act_batch", "act_length", "act_embed"))


def _bias(p, name, like, cdt):
  """A bias added to a projection's output: in the compute dtype on the float32 path (as ever), in float32 (the
  projection's output dtype) on the mixed path."""
  return p[name].astype(like.dtype if precision.is_mixed(cdt) else cdt)


def held_dtype(choice: str, cfg: ModelConfig):
  """The dtype a `model.residual_dtype` / `model.projection_dtype` choice names: float32 (the defaults: 16-bit sums
  of 30+ layers drift; XLA:CPU's fast 16-bit dots need a float32 output), or the compute dtype ("compute")."""
  return jnp.float32 if choice == "float32" else to_dtype(cfg.compute_dtype)


def remat_policy(name: str):
  cp = jax.checkpoint_policies
  return {
      "full": cp.nothing_saveable,
      "dots": cp.checkpoint_dots,
      "dots_with_no_batch_dims": cp.dots_with_no_batch_dims_saveable,
      "save_attention_out": cp.save_only_these_names("attn_out"),
  }[name]


def embed_lookup(table: jax.Array, ids: jax.Array) -> jax.Array:
  """`table[ids]` for the (vocab, embed)-sharded parameter table and [B, S] batch-sharded ids, never holding the
  whole table on a chip.

  Under FSDP the table's embed dimension is split over the same mesh axes as the batch. A plain lookup all-gathers
  the table (a [V, D] copy per chip: 594 MiB float32 for Qwen3's 151,936 x 1,024) and its transpose scatters into
  another unsharded [V, D] before reduce-scattering. Here each chip instead gathers the ids of its FSDP group (a few
  KiB of int32), looks them up in its own [V, D/n] columns, and one all-to-all trades the columns of every row for
  the rows of its own batch block. The transpose is the mirror image: an all-to-all of the rows' gradients and a
  scatter into the chip's own [V, D/n] slice, born in the parameter's sharding with nothing left to reduce over
  FSDP. Vocabulary sharding (tensor parallelism) adds a masked lookup and a psum. Layouts this does not cover (the
  embed axes not among the batch axes, a sharded length or activation embed axis) take the plain lookup.
  Measured (`benchmarks/aot_embed_grad.py`, 0.6B contrastive on v5p-64, bf16): 5.36 -> 5.00 GiB per chip, none of
  the plain lookup's seven [151936, 1024] float32 buffers left (docs/aot_sweep.md)."""
  plan = _lookup_plan(ids.ndim)
  if plan is None:
    return jnp.take(constrain(table, ("vocab", None)), ids, axis=0)
  vocab_axes, embed_axes, table_spec, ids_spec, out_spec = plan

  def local(t, i):  # t: [V / v, D / n], i: [B / b, S]
    i = jax.lax.all_gather(i, embed_axes, axis=0, tiled=True)  # the FSDP group's ids, [B / b * n, S]
    if vocab_axes:  # this chip holds rows [start, start + rows) of the vocabulary
      rows = t.shape[0]
      local_ids = i - jax.lax.axis_index(vocab_axes) * rows
      inside = (local_ids >= 0) & (local_ids < rows)
      cols = jnp.take(t, jnp.where(inside, local_ids, 0), axis=0) * inside[..., None].astype(t.dtype)
      cols = jax.lax.psum(cols, vocab_axes)
    else:
      cols = jnp.take(t, i, axis=0)  # [B / b * n, S, D / n]
    # chunk k of the group's rows goes to the group's k-th chip; the D / n columns arrive in embed-shard order
    return jax.lax.all_to_all(cols, embed_axes, split_axis=0, concat_axis=cols.ndim - 1, tiled=True)

  with jax.named_scope("embed_lookup"):  # names its collectives in the HLO (tests tell them from chunking's)
    return jax.shard_map(local, in_specs=(table_spec, ids_spec), out_specs=out_spec)(table, ids)


def _lookup_plan(ids_ndim: int):
  """Mesh axes and specs for the all-to-all lookup under the active mesh and rules, or None for the plain one."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty or not flax_spmd.get_logical_axis_rules():
    return None
  size = lambda axes: math.prod(mesh.shape[a] for a in axes)
  vocab_axes, embed_axes, batch = mesh_axes("vocab"), mesh_axes("embed"), mesh_axes("act_batch")
  rest = [a for name in ("act_length", "act_embed") for a in mesh_axes(name)]
  if size(embed_axes) == 1 or not set(embed_axes) <= set(batch) or set(vocab_axes) & set(batch) or rest:
    return None
  vocab, embed, batch = vocab_axes or None, embed_axes or None, batch or None
  tail = (None,) * (ids_ndim - 1)
  return vocab_axes, embed_axes, P(vocab, embed), P(batch, *tail), P(batch, *tail, None)


def _param(key, shape, names, kind, dtype):
  if kind == "ones":
    value = jnp.ones(shape, dtype)
  elif kind == "zeros":
    value = jnp.zeros(shape, dtype)
  else:
    value = INIT_STD * jax.random.normal(key, shape, dtype)
  return nnx.Param(value, out_sharding=names)


class DecoderLayers(nnx.Module):
  """All blocks' parameters stacked on a leading `layers` axis (scan-friendly, one compile for any depth)."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    dtype = to_dtype(cfg.param_dtype)
    self.names = layer_param_names(cfg)
    for name in self.names:
      shape_fn, names, kind = LAYER_PARAMS[name]
      setattr(self, name, _param(rngs.params(), (cfg.num_layers,) + shape_fn(cfg), ("layers",) + names, kind, dtype))

  def arrays(self) -> dict[str, jax.Array]:
    return {name: getattr(self, name)[...] for name in self.names}


class Encoder(nnx.Module):
  """The encoder with its LM head: tied (the embedding table), untied (`lm_head`), or none (encoder-only)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    dtype = to_dtype(cfg.param_dtype)
    self.embed_tokens = _param(rngs.params(), (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), "normal", dtype)
    self.layers = DecoderLayers(cfg, rngs)
    self.norm = _param(None, (cfg.hidden_size,), ("norm",), "ones", dtype)
    if cfg.has_untied_head:
      self.lm_head = _param(rngs.params(), (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), "normal", dtype)

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
               segment_ids: jax.Array | None = None, positions: jax.Array | None = None) -> jax.Array:
    """Final hidden states [B, S, D] (after the final RMSNorm), in the compute dtype.

    attention_mask: [B, S], 1 for real tokens (padding may sit on either side).
    segment_ids: [B, S] for packed rows, 0 for padding; takes precedence over attention_mask.
    """
    cfg = self.cfg
    if segment_ids is None:
      segment_ids = jnp.ones_like(input_ids) if attention_mask is None else attention_mask
    segment_ids = segment_ids.astype(jnp.int32)
    if positions is None:
      positions = segment_positions(segment_ids)
    x = embed_lookup(self.embed_tokens[...], input_ids).astype(held_dtype(cfg.residual_dtype, cfg))
    x = constrain(x, ("act_batch", "act_length", "act_embed"))
    cos, sin = rope_tables(positions, cfg)

    body = lambda carry, p: (decoder_layer(p, carry, cos, sin, segment_ids, cfg), None)
    if cfg.remat != "none":
      body = jax.checkpoint(body, policy=remat_policy(cfg.remat), prevent_cse=not cfg.scan_layers)
    params = self.layers.arrays()
    if cfg.scan_layers:
      x, _ = jax.lax.scan(body, x, params)
    else:
      for i in range(cfg.num_layers):
        x, _ = body(x, jax.tree.map(lambda a: a[i], params))
    return rms_norm(x, self.norm[...], cfg.rms_norm_eps).astype(to_dtype(cfg.compute_dtype))

  def lm_head_weight(self) -> jax.Array:
    """[D, V] output projection (the transposed embedding when tied)."""
    if self.cfg.tie_embeddings:
      return self.embed_tokens[...].T
    if not self.cfg.lm_head:
      raise ValueError("this model is encoder-only (model.lm_head=False): it has no LM head; tie the head to the "
                       "embeddings (model.tie_embeddings=True) to train it with an LM objective")
    return self.lm_head[...]

  def logits(self, hidden: jax.Array) -> jax.Array:
    """Full [B, S, V] logits in float32. Fine for tests and small vocabularies; training losses chunk instead."""
    w = self.lm_head_weight().astype(hidden.dtype)
    return jnp.einsum("bsd,dv->bsv", hidden, w, preferred_element_type=jnp.float32)


def create_model(cfg: ModelConfig, seed: int = 0) -> Encoder:
  """Build a randomly initialised model. Under `sharding.activate(mesh, rules)` the parameters are born sharded:
  the init runs inside jit, so no host ever holds a full unsharded copy."""
  # Always under jit: one compiled init, and the same values with or without a mesh (eager init fuses differently).
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty:
    with nnx.use_eager_sharding(False):
      return nnx.jit(lambda: Encoder(cfg, rngs=nnx.Rngs(seed)))()
  return nnx.jit(lambda: Encoder(cfg, rngs=nnx.Rngs(seed)))()


def abstract_model(cfg: ModelConfig) -> Encoder:
  """Shapes, dtypes and sharding metadata only — for restores, conversion and memory estimates."""
  with nnx.use_eager_sharding(False):
    return nnx.eval_shape(lambda: Encoder(cfg, rngs=nnx.Rngs(0)))


def params_of(model: Encoder) -> dict[str, Any]:
  """The model's parameters as a plain nested dict of arrays (the layout `convert.hf` reads and writes)."""
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def model_from_params(cfg: ModelConfig, params: dict[str, Any], mesh=None, rules=None) -> Encoder:
  """Build a model holding `params` (numpy or jax arrays), placed with the shardings the rules give on `mesh`."""
  import numpy as np

  from pplx_jax.core import sharding as shd

  graphdef, abstract_state = nnx.split(abstract_model(cfg))
  pure = nnx.to_pure_dict(abstract_state)
  want = jax.tree.map(lambda a: (a.shape, a.dtype), pure)
  got_paths = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
  want_paths = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(want,
                is_leaf=lambda x: isinstance(x, tuple))[0]}
  if got_paths != want_paths:
    raise ValueError(f"parameter tree mismatch: missing {sorted(want_paths - got_paths)}, "
                     f"unexpected {sorted(got_paths - want_paths)}")

  def check(path, arr, spec):
    shape, dtype = spec
    if tuple(np.shape(arr)) != tuple(shape):
      raise ValueError(f"parameter {jax.tree_util.keystr(path)} has shape {tuple(np.shape(arr))}, expected {shape}")
    return arr

  jax.tree_util.tree_map_with_path(check, params, want, is_leaf=lambda x: isinstance(x, tuple) and len(x) == 2
                                   and isinstance(x[0], tuple))
  if mesh is None:
    values = jax.tree.map(lambda a, s: jnp.asarray(a, dtype=s.dtype), params, pure)
  else:
    shardings = nnx.to_pure_dict(shd.param_shardings(abstract_state, mesh, rules or shd.DEFAULT_RULES))
    values = jax.tree.map(_placed, params, pure, shardings)
  nnx.replace_by_pure_dict(abstract_state, values)
  return nnx.merge(graphdef, abstract_state)


def _placed(a, spec, sharding):
  """A host array, or a device array (e.g. restored from a checkpoint), in `sharding` with spec's dtype."""
  import numpy as np

  if isinstance(a, jax.Array):
    # A restored array may span other processes' devices: cast and reshard on the devices, never via the host.
    return jax.device_put(a.astype(spec.dtype), sharding)
  return jax.device_put(np.asarray(a, dtype=spec.dtype), sharding)
