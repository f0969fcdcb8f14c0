"""One attention entry point for every stage: masks from segment ids, kernels chosen per backend.

Masking semantics (shared by every implementation): token q may attend token k iff they carry the same segment id,
and, when causal, k <= q. Segment id 0 marks padding; padding rows attend only padding, so they never produce NaNs
and never influence real tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def attention_mask(segment_ids: jax.Array, causal: bool) -> jax.Array:
  """[B, S] segment ids -> [B, 1, S, S] boolean mask (broadcast over heads)."""
  same = segment_ids[:, :, None] == segment_ids[:, None, :]
  if causal:
    s = segment_ids.shape[1]
    same = same & jnp.tril(jnp.ones((s, s), dtype=bool))[None]
  return same[:, None]


def resolve_impl(impl: str) -> str:
  if impl != "auto":
    return impl
  # cuDNN's fused kernel needs an arbitrary-mask path we have not validated for packed segments yet, so GPUs
  # use XLA until the kernel issue lands; TPUs likewise until splash is wired in.
  return "xla"


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array, *, causal: bool,
                          impl: str = "auto") -> jax.Array:
  """q: [B, S, N, H]; k, v: [B, S, K, H] with N % K == 0 (grouped-query); returns [B, S, N, H].

  Softmax runs in float32 whatever the compute dtype (as transformers' eager/SDPA paths do on CPU).
  """
  impl = resolve_impl(impl)
  if impl == "xla":
    return _xla_attention(q, k, v, segment_ids, causal)
  if impl == "cudnn":
    mask = attention_mask(segment_ids, causal)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")
  raise NotImplementedError(f"attention implementation {impl!r} is not available in this build")


def _xla_attention(q, k, v, segment_ids, causal):
  b, s, n, h = q.shape
  kv = k.shape[2]
  g = n // kv
  # Group query heads under their KV head instead of repeating K/V: no extra memory for GQA.
  qg = q.reshape(b, s, kv, g, h)
  scores = jnp.einsum("bqkgh,bskh->bkgqs", qg, k, preferred_element_type=jnp.float32)
  scores = scores * (h ** -0.5)
  mask = attention_mask(segment_ids, causal)[:, :, None]  # [B, 1, 1, S, S]
  scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum("bkgqs,bskh->bqkgh", probs, v)
  return out.reshape(b, s, n, h)
