"""How a matmul runs: the one place that decides the precision of the model's dots.

Mixed precision (`model.compute_dtype` = bfloat16 / float16, parameters and optimizer state in float32):
  * every projection (q/k/v/o, the MLP, the LM head) takes 16-bit operands and accumulates in float32
    (`preferred_element_type=float32`), forward and backward; its output is float32, or 16-bit where the caller asks
    (`model.projection_dtype=compute`, for TPU/GPU memory: their matrix units accumulate in float32 either way);
  * the weight gradient comes out of a float32-accumulating dot in float32 (no 16-bit round trip of gradients);
  * the residual stream, norms, softmax, losses and similarities stay float32 (the callers do that).
float32 compute is the parity-test path: there `matmul` is the plain `dot_general` the model always ran.

What XLA:CPU needs for the 16-bit dots to reach its fast kernels (measured, benchmarks/README.md "bf16"):
  * a 16-bit dot with a 16-bit *output* runs at a third of the float32-output speed: always ask for float32;
  * a dot contracting the leading dim of both operands (the weight gradient x^T g) is not a bf16 kernel: XLA
    upcasts both operands to float32 and runs an f32 dot. XLA's transpose folding turns a plain `x.T` back into that
    dot, so `_transposed` writes the transpose as a blocked reshape it cannot fold (a real copy of the small
    activation operand, then a row-major bf16 x bf16 -> f32 dot, 2.4x faster);
  * operands are 2-D (one free dim each): the callers flatten tokens to [T, D] and heads to N*H.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

F32 = jnp.float32


def is_mixed(compute_dtype) -> bool:
  """True for a 16-bit compute dtype (the mixed-precision path); False for float32 (the parity path)."""
  return jnp.dtype(compute_dtype).itemsize < 4


def dot(a: jax.Array, b: jax.Array, contract: tuple[int, int] = (1, 0), out=F32) -> jax.Array:
  """A 2-D dot contracting a[contract[0]] with b[contract[1]], accumulated in float32 and returned as `out`."""
  return jax.lax.dot_general(a, b, (((contract[0],), (contract[1],)), ((), ())), preferred_element_type=out)


def _transposed(x: jax.Array) -> jax.Array:
  """x.T [K, T] as a materialised row-major array (see the module docstring: a plain x.T is folded into the dot)."""
  t, k = x.shape
  block = next((b for b in (8, 4, 2) if t % b == 0), None)
  if block is None:
    return jnp.transpose(x)
  return x.reshape(t // block, block, k).transpose(2, 0, 1).reshape(k, t)


def row_major(w: jax.Array) -> jax.Array:
  """w [K, F] as a materialised row-major array: a tied head arrives as the table's transpose, which XLA would fold
  into the dots as a column-major operand (then upcast to float32); the blocked transpose cannot be folded."""
  return _transposed(jnp.transpose(w))


def weight_grad(x: jax.Array, g: jax.Array) -> jax.Array:
  """x^T g in float32 from 16-bit x [T, K] and g [T, F] (the fast layout; see the module docstring).

  x is materialised before the transposing copy: fused into it, x's producer (the MLP's SiLU product, recomputed
  under remat) runs in transposed order at a quarter of its speed."""
  return dot(_unfused_transposed(x, g), g)


def _unfused_transposed(x, g):
  # Both branches are the same copy; the conditional only keeps XLA from fusing the transposing copy with x's
  # producer (XLA drops optimization barriers on CPU). The predicate is runtime data so that it is not folded away.
  pred = jnp.isfinite(g[0, 0])
  return jax.lax.cond(pred, _transposed, _transposed, x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _mixed_matmul(x: jax.Array, w: jax.Array, compute_dtype, out_dtype) -> jax.Array:
  return dot(x.astype(compute_dtype), w.astype(compute_dtype), out=out_dtype)


def _mixed_fwd(x, w, compute_dtype, out_dtype):
  xc, wc = x.astype(compute_dtype), w.astype(compute_dtype)
  # zero-size arrays carry the primal dtypes into the backward pass (residuals must be arrays)
  return dot(xc, wc, out=out_dtype), (xc, wc, jnp.zeros((0,), x.dtype), jnp.zeros((0,), w.dtype))


def _mixed_bwd(compute_dtype, out_dtype, res, g):
  xc, wc, x_like, w_like = res
  gc = g.astype(compute_dtype)
  dx = dot(gc, wc, (1, 1)).astype(x_like.dtype)
  dw = weight_grad(xc, gc).astype(w_like.dtype)
  return dx, dw


_mixed_matmul.defvjp(_mixed_fwd, _mixed_bwd)


def matmul(x: jax.Array, w: jax.Array, compute_dtype, in_dims: int = 1, out_dtype=F32) -> jax.Array:
  """A projection: x [T, *K] times w [*K, *F] (K = the last `in_dims` dims of x, the first of w) -> [T, *F].

  float32 compute: `dot_general(x, w.astype(compute_dtype))` (the result is in x's dtype, as the model always ran;
  `out_dtype` does not apply). 16-bit compute: 16-bit operands, float32 accumulation and an `out_dtype` result
  (float32 unless the caller asks for the compute dtype); the backward dots accumulate in float32 too, and the
  gradient of w comes out in w's dtype from a float32 accumulator.
  """
  if x.ndim != in_dims + 1:
    raise ValueError(f"matmul: x {x.shape} must be [tokens, *K] with {in_dims} contracting dim(s) (flatten tokens)")
  k_shape, f_shape = w.shape[:in_dims], w.shape[in_dims:]
  if tuple(x.shape[1:]) != tuple(k_shape):
    raise ValueError(f"matmul: x {x.shape} and w {w.shape} disagree on the contracting dims")
  if not is_mixed(compute_dtype):  # the einsum the model always ran (its contraction order pins the float32 bits)
    ks, fs = "zyxw"[:in_dims], "abcd"[:len(f_shape)]
    return jnp.einsum(f"t{ks},{ks}{fs}->t{fs}", x, w.astype(compute_dtype))
  k, f = 1, 1
  for n in k_shape:
    k *= n
  for n in f_shape:
    f *= n
  y = _mixed_matmul(x.reshape(x.shape[0], k), w.reshape(k, f), jnp.dtype(compute_dtype), jnp.dtype(out_dtype))
  return y.reshape((x.shape[0],) + tuple(f_shape))


def operand(x: jax.Array, compute_dtype) -> jax.Array:
  """An activation entering a non-projection dot (attention): cast to the 16-bit compute dtype on the mixed path,
  unchanged on the float32 path."""
  return x.astype(compute_dtype) if is_mixed(compute_dtype) else x
