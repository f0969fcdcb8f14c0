"""One attention entry point for every stage: masks from segment ids, kernels chosen per backend.

Masking semantics (shared by every implementation): token q may attend token k iff they carry the same segment id,
and, when causal, k <= q. Segment id 0 marks padding; padding rows attend only padding, so they never produce NaNs
and never influence real tokens.

Implementations:
  xla     the reference: scores materialised in float32 ([B, N, S, S] per layer).
  cudnn   `jax.nn.dot_product_attention(implementation="cudnn")` (GPU, bf16/fp16 only). The boolean segment mask is
          handed to cuDNN, which turns it into an additive [B, 1, S, S] bias: correct for packing and padding, but
          that bias is O(B·S²) memory per layer (not per head). Padding-free or right-padded batches could pass
          sequence lengths instead; not done because packed pretraining rows need the general mask.
  splash  TPU Pallas splash attention (a FullMask/CausalMask plus segment ids; no S×S array ever exists), run per
          device under `shard_map` over the batch and head mesh axes (a Pallas call cannot be auto-partitioned).
          Off TPU it runs in Pallas interpret mode (slow; for tests only).
  auto    splash on TPU (xla for sequence lengths splash cannot tile), cudnn on GPU with a 16-bit compute dtype,
          xla otherwise. The platform is the one the
          program is compiled for (the active mesh's), so an AOT compile for a TPU topology on a CPU host gets splash.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax.core import spmd as flax_spmd
from jax.sharding import PartitionSpec as P

from pplx_jax.core.sharding import mesh_axes

# Splash tiles the sequence in blocks; its kv compute block must be a multiple of the 128 TPU lanes.
SPLASH_BLOCK = 512
SPLASH_MIN_BLOCK = 128


def attention_mask(segment_ids: jax.Array, causal: bool) -> jax.Array:
  """[B, S] segment ids -> [B, 1, S, S] boolean mask (broadcast over heads)."""
  same = segment_ids[:, :, None] == segment_ids[:, None, :]
  if causal:
    s = segment_ids.shape[1]
    same = same & jnp.tril(jnp.ones((s, s), dtype=bool))[None]
  return same[:, None]


def target_platform() -> str:
  """The platform the current trace is compiled for: the active mesh's devices, else the default backend."""
  mesh = jax.sharding.get_abstract_mesh()
  device = getattr(mesh, "abstract_device", None) if mesh is not None and not mesh.empty else None
  return getattr(device, "platform", None) or jax.default_backend()


def resolve_impl(impl: str, dtype=None) -> str:
  if impl != "auto":
    return impl
  platform = target_platform()
  if platform == "tpu":
    return "splash"
  if platform in ("gpu", "cuda", "rocm") and dtype is not None and jnp.dtype(dtype).itemsize == 2:
    return "cudnn"  # cuDNN's fused kernel takes only 16-bit inputs; float32 runs keep the reference
  return "xla"


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array, *, causal: bool,
                          impl: str = "auto") -> jax.Array:
  """q: [B, S, N, H]; k, v: [B, S, K, H] with N % K == 0 (grouped-query); returns [B, S, N, H].

  Softmax runs in float32 whatever the compute dtype (as transformers' eager/SDPA paths do on CPU). With 16-bit
  inputs the XLA path returns float32 (float32 accumulation); the fused kernels return the input dtype.
  """
  requested, impl = impl, resolve_impl(impl, q.dtype)
  if requested == "auto" and impl == "splash" and q.shape[1] % SPLASH_MIN_BLOCK:
    impl = "xla"  # short unaligned rows (tiny configs, odd query lengths): the reference costs little there
  if impl == "xla":
    return _xla_attention(q, k, v, segment_ids, causal)
  if impl == "cudnn":
    mask = attention_mask(segment_ids, causal)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")
  if impl == "splash":
    return splash_attention(q, k, v, segment_ids, causal)
  raise NotImplementedError(f"attention implementation {impl!r} is not available in this build")


def _xla_attention(q, k, v, segment_ids, causal):
  b, s, n, h = q.shape
  kv = k.shape[2]
  g = n // kv
  # GQA without repeating K/V: the g query heads sharing a KV head are folded into the query rows, so both matmuls
  # are plain [B*K]-batched matmuls with leading batch dims (7-14% faster CPU steps than a separate group axis).
  qf = q.reshape(b, s, kv, g, h).transpose(0, 2, 3, 1, 4).reshape(b, kv, g * s, h)
  kt = k.transpose(0, 2, 1, 3)
  vt = v.transpose(0, 2, 1, 3)
  scores = jnp.einsum("bkqh,bksh->bkqs", qf, kt, preferred_element_type=jnp.float32) * (h ** -0.5)
  scores = scores.reshape(b, kv, g, s, s)
  mask = attention_mask(segment_ids, causal)[:, :, None]  # [B, 1, 1, S, S]
  scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype).reshape(b, kv, g * s, s)
  # 16-bit operands: accumulate and return float32 (a 16-bit-output dot misses XLA:CPU's fast kernels; see
  # models/precision.py); float32 operands: the plain dot, as the parity tests pin.
  wide = {"preferred_element_type": jnp.float32} if jnp.dtype(v.dtype).itemsize < 4 else {}
  out = jnp.einsum("bkqs,bksh->bkqh", probs, vt, **wide)
  return out.reshape(b, kv, g, s, h).transpose(0, 3, 1, 2, 4).reshape(b, s, n, h)


# ---- splash (TPU Pallas) ----


# Not cached: the kernel holds its block-sparsity tables as arrays staged into the current trace (a cached kernel
# would leak them into the next one); building it is a few NumPy ops on a (S/512)^2 block grid.
def _splash_kernel(num_heads: int, seq_len: int, causal: bool, interpret: bool):
  from jax.experimental.pallas.ops.tpu.splash_attention import (
    splash_attention_kernel as sk,
  )
  from jax.experimental.pallas.ops.tpu.splash_attention import (
    splash_attention_mask as sm,
  )

  if seq_len % SPLASH_MIN_BLOCK:
    raise ValueError(f"model.attention_impl='splash' needs the sequence length to be a multiple of "
                     f"{SPLASH_MIN_BLOCK} (TPU lanes), got {seq_len}; pad the batch or use attention_impl='xla'")
  block = SPLASH_BLOCK if seq_len % SPLASH_BLOCK == 0 else SPLASH_MIN_BLOCK
  sizes = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                        block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
  one = sm.CausalMask((seq_len, seq_len)) if causal else sm.FullMask((seq_len, seq_len))
  mask = sm.MultiHeadMask([one] * num_heads)
  return sk.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array, causal: bool,
                     interpret: bool | None = None) -> jax.Array:
  """Splash attention with the module's masking semantics; same shapes as `dot_product_attention`.

  Padding (segment id 0) attends only padding, as in the reference, so no row is fully masked (splash requires
  that). `interpret=None`: interpret mode unless the target platform is TPU.
  """
  from jax.experimental.pallas.ops.tpu.splash_attention import (
    splash_attention_kernel as sk,
  )

  if interpret is None:
    interpret = target_platform() != "tpu"
  h = q.shape[-1]
  # Splash does not scale the logits; scaling q in its own dtype is what the reference's score scaling amounts to.
  q = q * jnp.asarray(h ** -0.5, q.dtype)

  def local(q, k, v, seg):  # one device's [b, S, n, H] block
    kernel = _splash_kernel(q.shape[2], q.shape[1], causal, interpret)
    seg = seg.astype(jnp.int32)
    one = lambda q1, k1, v1, s1: kernel(q1, k1, v1, segment_ids=sk.SegmentIds(q=s1, kv=s1))
    to_heads = lambda x: x.transpose(0, 2, 1, 3)  # [b, S, n, H] -> [b, n, S, H]
    out = jax.vmap(one)(to_heads(q), to_heads(k), to_heads(v), seg)
    return out.transpose(0, 2, 1, 3)

  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty or not flax_spmd.get_logical_axis_rules():
    return local(q, k, v, segment_ids)
  batch, heads, kv_heads = mesh_axes("act_batch"), mesh_axes("act_heads"), mesh_axes("act_kv_heads")
  if heads != kv_heads:
    raise ValueError(f"splash attention: query heads are sharded over {heads} but KV heads over {kv_heads} "
                     "(sharding rules act_heads / act_kv_heads must match so each device keeps whole GQA groups)")
  n_shards = math.prod(mesh.shape[a] for a in heads)
  if k.shape[2] % n_shards:
    raise ValueError(f"splash attention: {k.shape[2]} KV heads are not divisible by the {n_shards} shards of mesh "
                     f"axes {heads}")
  b_spec = batch or None
  h_spec = heads or None
  qkv = P(b_spec, None, h_spec, None)
  return jax.shard_map(local, in_specs=(qkv, qkv, qkv, P(b_spec, None)), out_specs=qkv, check_vma=False)(
      q, k, v, segment_ids)
