"""Pooling and the paper's embedding quantisers (§3): pure functions of arrays.

- mean pooling over real tokens (after the final RMSNorm), in float32;
- int8: round(127 * tanh(x)); inside training the forward is the int8 code and the backward is tanh's gradient
  (straight-through over the rounding);
- binary: sign bits, set where x >= 0, packed most significant bit first (np.packbits order);
- Matryoshka: the first `dim` dimensions, taken before quantising.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def mean_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
  """hidden [..., S, D], mask [..., S] (1 = real token) -> [..., D] float32. Rows without tokens give zeros."""
  m = mask.astype(jnp.float32)[..., None]
  total = jnp.sum(hidden.astype(jnp.float32) * m, axis=-2)
  return total / jnp.maximum(jnp.sum(m, axis=-2), 1.0)


def span_pool(hidden: jax.Array, span_ids: jax.Array, num_spans: int) -> jax.Array:
  """Mean of each span: hidden [B, S, D], span_ids [B, S] in 1..num_spans (0 = not pooled) -> [B, num_spans, D]."""
  onehot = (span_ids[..., None] == jnp.arange(1, num_spans + 1)).astype(jnp.float32)  # [B, S, n]
  total = jnp.einsum("bsn,bsd->bnd", onehot, hidden.astype(jnp.float32))
  return total / jnp.maximum(onehot.sum(axis=1), 1.0)[..., None]


def truncate(x: jax.Array, dim: int | None) -> jax.Array:
  if dim is None or dim <= 0 or dim >= x.shape[-1]:
    return x
  return x[..., :dim]


@jax.custom_vjp
def int8_ste(x: jax.Array) -> jax.Array:
  """round(127·tanh(x)) as float32 in the forward pass; d/dx tanh(x) in the backward pass.

  As the released `st_quantize.Int8TanhQuantizer`: hard.detach() + soft - soft.detach() with soft = tanh(x), so the
  backward pass is tanh's gradient, unscaled (cosine similarity does not see the factor 127 anyway). Rounding is
  half-to-even like torch.round; the paper's floor(y + 1/2) differs only on exact .5 ties.
  """
  return jnp.round(127.0 * jnp.tanh(x))


def _int8_fwd(x):
  t = jnp.tanh(x)
  return jnp.round(127.0 * t), t


def _int8_bwd(t, g):
  return (g * (1.0 - t * t),)


int8_ste.defvjp(_int8_fwd, _int8_bwd)


def normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Unit rows in float32: x * rsqrt(max(|x|^2, eps^2)). Unlike x / max(|x|, eps), whose norm has a NaN gradient at
  0, this is finite for all-zero rows (empty padded hard negatives or chunks), which get zero gradient."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def cosine_similarity(a: jax.Array, b: jax.Array, eps: float = 1e-12) -> jax.Array:
  """[N, D] x [M, D] -> [N, M] in float32."""
  return normalize(a, eps) @ normalize(b, eps).T


# ---- numpy forms for storage / the embed command (exact codes, no gradients) ----


def quantize_int8_np(x: np.ndarray) -> np.ndarray:
  return np.round(127.0 * np.tanh(x.astype(np.float32))).astype(np.int8)


def quantize_binary_np(x: np.ndarray) -> np.ndarray:
  """[N, D] -> [N, ceil(D/8)] uint8: bit set where x >= 0, most significant bit first."""
  return np.packbits(x >= 0, axis=-1, bitorder="big")


def quantize_np(x: np.ndarray, dtype: str) -> np.ndarray:
  if dtype == "float32":
    return x.astype(np.float32)
  if dtype == "int8":
    return quantize_int8_np(x)
  if dtype == "binary":
    return quantize_binary_np(x)
  raise ValueError(f"unknown embedding dtype {dtype!r}; expected float32, int8 or binary")


def last_token_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
  """The state of the last real token (decoder-style embedders; the paper's ablation baseline). Right padding."""
  idx = jnp.maximum(jnp.sum(mask.astype(jnp.int32), axis=-1) - 1, 0)
  return jnp.take_along_axis(hidden.astype(jnp.float32), idx[:, None, None], axis=1)[:, 0]


def pool(hidden: jax.Array, mask: jax.Array, kind: str = "mean") -> jax.Array:
  if kind == "mean":
    return mean_pool(hidden, mask)
  if kind == "last":
    return last_token_pool(hidden, mask)
  raise ValueError(f"pooling {kind!r} is not one of ('mean', 'last')")
