"""The paper's embedding quantisers (§3) and Matryoshka truncation: pure functions of arrays.

- int8: round(127 * tanh(x)); inside training the forward is the int8 code and the backward is tanh's gradient
  (straight-through over the rounding);
- binary: sign bits, set where x >= 0, packed most significant bit first (np.packbits order); the released
  model's `ubinary`, hence also accepted under that name;
- sign: +1 where x >= 0, else -1, int8 per dimension (the released model's `binary`);
- Matryoshka: the first `dim` dimensions, taken before quantising.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


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


# ---- numpy forms for storage / the embed command (exact codes, no gradients) ----


def quantize_int8_np(x: np.ndarray) -> np.ndarray:
  return np.round(127.0 * np.tanh(x.astype(np.float32))).astype(np.int8)


def quantize_binary_np(x: np.ndarray) -> np.ndarray:
  """[N, D] -> [N, ceil(D/8)] uint8: bit set where x >= 0, most significant bit first."""
  return np.packbits(x >= 0, axis=-1, bitorder="big")


EMBEDDING_DTYPES = ("float32", "int8", "binary", "ubinary", "sign")


def quantize_np(x: np.ndarray, dtype: str) -> np.ndarray:
  if dtype == "float32":
    return x.astype(np.float32)
  if dtype == "int8":
    return quantize_int8_np(x)
  if dtype in ("binary", "ubinary"):
    return quantize_binary_np(x)
  if dtype == "sign":
    return np.where(x >= 0, 1, -1).astype(np.int8)
  raise ValueError(f"unknown embedding dtype {dtype!r}; expected one of {EMBEDDING_DTYPES}")
