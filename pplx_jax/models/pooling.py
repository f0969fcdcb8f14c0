"""Pooling of final hidden states and the similarities the losses use: pure functions of arrays.

- mean pooling over real tokens (after the final RMSNorm), in float32 — the pplx-embed embedding;
- span pooling (the mean of each chunk's tokens: late chunking) and last-token pooling (the paper's causal baseline);
- unit normalisation and cosine similarity in float32, finite for all-zero rows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


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


def normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Unit rows in float32: x * rsqrt(max(|x|^2, eps^2)). Unlike x / max(|x|, eps), whose norm has a NaN gradient at
  0, this is finite for all-zero rows (empty padded hard negatives or chunks), which get zero gradient."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def cosine_similarity(a: jax.Array, b: jax.Array, eps: float = 1e-12) -> jax.Array:
  """[N, D] x [M, D] -> [N, M] in float32."""
  return normalize(a, eps) @ normalize(b, eps).T


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
