"""Pooling and quantisers against NumPy written from the paper's formulas."""

import jax
import jax.numpy as jnp
import numpy as np

from pplx_jax.models import pooling, quantize


def test_mean_pool_ignores_padding():
  rng = np.random.RandomState(0)
  h = rng.randn(3, 7, 5).astype(np.float32)
  mask = np.array([[1] * 7, [1] * 3 + [0] * 4, [0] * 2 + [1] * 5])
  out = np.asarray(pooling.mean_pool(jnp.asarray(h), jnp.asarray(mask)))
  for b in range(3):
    np.testing.assert_allclose(out[b], h[b][mask[b] == 1].mean(0), rtol=1e-6, atol=1e-6)


def test_span_pool_equals_per_span_means():
  rng = np.random.RandomState(1)
  h = rng.randn(2, 9, 4).astype(np.float32)
  spans = np.array([[1, 1, 0, 2, 2, 2, 0, 3, 3], [1, 0, 2, 2, 2, 2, 2, 0, 0]])
  out = np.asarray(pooling.span_pool(jnp.asarray(h), jnp.asarray(spans), 3))
  for b in range(2):
    for s in range(1, 4):
      sel = spans[b] == s
      ref = h[b][sel].mean(0) if sel.any() else np.zeros(4)
      np.testing.assert_allclose(out[b, s - 1], ref, rtol=1e-6, atol=1e-6)


def test_int8_forward_is_exact_codes_and_backward_is_tanh_gradient():
  x = np.linspace(-3, 3, 101).astype(np.float32)
  codes = np.asarray(quantize.int8_ste(jnp.asarray(x)))
  ref = np.round(127 * np.tanh(x.astype(np.float64)))
  assert np.array_equal(codes, ref) and codes.min() >= -127 and codes.max() <= 127
  g = np.random.RandomState(2).randn(101).astype(np.float32)
  _, vjp = jax.vjp(quantize.int8_ste, jnp.asarray(x))
  (grad,) = vjp(jnp.asarray(g))
  np.testing.assert_allclose(np.asarray(grad), g * (1 - np.tanh(x) ** 2), rtol=1e-5, atol=1e-7)
  assert np.array_equal(quantize.quantize_int8_np(x), ref.astype(np.int8))


def test_binary_packs_sign_bits_msb_first():
  x = np.array([[0.5, -1, 0.0, -0.0, 2, -3, 1e-9, -1e-9, 4]], np.float32)
  packed = quantize.quantize_binary_np(x)
  # bits: 1 0 1 1 1 0 1 0 | 1 -> 0b10111010, 0b10000000 (-0.0 >= 0 is True)
  assert packed.tolist() == [[0b10111010, 0b10000000]]


def test_cosine_similarity():
  rng = np.random.RandomState(3)
  a, b = rng.randn(4, 6), rng.randn(5, 6)
  ref = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T
  np.testing.assert_allclose(np.asarray(pooling.cosine_similarity(jnp.asarray(a), jnp.asarray(b))), ref,
                             rtol=1e-5, atol=1e-6)
