"""Mixed precision (models/precision.py): 16-bit operands with float32 accumulation, float32 weight gradients, the
float32 path unchanged, and 16-bit dots that reach XLA:CPU's 16-bit kernels (not upcast to float32)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pplx_jax.core.model_config import ModelConfig
from pplx_jax.models import encoder, precision
from pplx_jax.objectives import diffusion

BF16 = jnp.bfloat16


def _bf16_round(a) -> np.ndarray:
  return np.asarray(jnp.asarray(a, jnp.float32).astype(BF16).astype(jnp.float32), np.float64)


def _dot_operand_types(hlo: str) -> list[tuple[str, str]]:
  """(lhs, rhs) element types of every dot in optimized HLO text (instruction names are unique per module)."""
  types = dict(re.findall(r"%([\w.\-]+) = (\w+)\[", hlo))
  out = []
  for lhs, rhs in re.findall(r"\bdot\(%([\w.\-]+), %([\w.\-]+)\)", hlo):
    out.append((types[lhs], types[rhs]))
  return out


@pytest.mark.parametrize("t", [24, 21])  # 24: the blocked transpose; 21: no block divides it (plain transpose)
def test_mixed_matmul_forward_and_gradients(t):
  rs = np.random.RandomState(0)
  x = jnp.asarray(rs.randn(t, 3, 8), jnp.float32)
  w = jnp.asarray(rs.randn(3, 8, 5, 2), jnp.float32)
  g = jnp.asarray(rs.randn(t, 5, 2), jnp.float32)
  y, vjp = jax.vjp(lambda x, w: precision.matmul(x, w, BF16, in_dims=2), x, w)
  dx, dw = vjp(g)
  assert y.dtype == jnp.float32 and dx.dtype == jnp.float32 and dw.dtype == jnp.float32
  xr, wr, gr = _bf16_round(x).reshape(t, 24), _bf16_round(w).reshape(24, 10), _bf16_round(g).reshape(t, 10)
  # 16-bit operands, exact products, float32 sums: within float32 accumulation error of the float64 reference
  np.testing.assert_allclose(np.asarray(y).reshape(t, 10), xr @ wr, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(dx).reshape(t, 24), gr @ wr.T, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(dw).reshape(24, 10), xr.T @ gr, rtol=1e-5, atol=1e-5)
  # and the same function as autodiff of the float32 matmul, to bf16 precision
  y32, vjp32 = jax.vjp(lambda x, w: jnp.einsum("tab,abcd->tcd", x, w), x, w)
  for got, want in zip((y, dx, dw), (y32,) + vjp32(g)):
    assert float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want)) < 2e-2
  # a 16-bit activation keeps its dtype for its gradient; the weight's gradient is still float32
  _, vjp16 = jax.vjp(lambda x, w: precision.matmul(x, w, BF16, in_dims=2), x.astype(BF16), w)
  dx16, dw16 = vjp16(g)
  assert dx16.dtype == BF16 and dw16.dtype == jnp.float32


def test_float32_path_is_the_plain_einsum():
  rs = np.random.RandomState(1)
  x, w = jnp.asarray(rs.randn(6, 4, 8), jnp.float32), jnp.asarray(rs.randn(4, 8, 16), jnp.float32)
  got = precision.matmul(x, w, jnp.float32, in_dims=2)
  assert "custom_vjp" not in str(jax.make_jaxpr(lambda x, w: precision.matmul(x, w, jnp.float32, 2))(x, w))
  np.testing.assert_array_equal(np.asarray(got), np.asarray(jnp.einsum("tnh,nhd->td", x, w)))
  with pytest.raises(ValueError, match="contracting"):
    precision.matmul(x, w[:3], jnp.float32, in_dims=2)


def test_mixed_dots_reach_16bit_kernels():
  """Forward, input-gradient and weight-gradient dots all take bf16 operands in the compiled program: XLA:CPU upcasts
  the dots its bf16 kernels do not take (a weight gradient x^T g written plainly is one) to float32."""
  x = jnp.ones((64, 32), jnp.float32)
  w = jnp.ones((32, 48), jnp.float32)
  fn = jax.jit(jax.grad(lambda x, w: jnp.sum(precision.matmul(x, w, BF16) ** 2), argnums=(0, 1)))
  types = _dot_operand_types(fn.lower(x, w).compile().as_text())
  assert len(types) == 3 and all(t == ("bf16", "bf16") for t in types), types
  # the plain x.T @ g (what autodiff writes) is upcast: the check above can fail
  plain = jax.jit(lambda x, g: jax.lax.dot_general(x, g, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32))
  assert _dot_operand_types(plain.lower(x.astype(BF16), jnp.ones((64, 48), BF16)).compile().as_text()) == [
      ("f32", "f32")]


def _tiny(dtype, **kw):
  return ModelConfig(vocab_size=128, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                     mlp_dim=96, compute_dtype=dtype, remat="none", **kw)


@pytest.mark.parametrize("family,residual,projection", [("qwen3", "float32", "float32"), ("qwen2", "float32", "float32"),
                                                         ("qwen3", "compute", "float32"), ("qwen3", "compute", "compute"),
                                                         ("qwen2", "float32", "compute")])
def test_bf16_diffusion_step_tracks_float32(family, residual, projection):
  kw = dict(family="qwen2", qk_norm=False, qkv_bias=True) if family == "qwen2" else {}
  model32 = encoder.create_model(_tiny("float32", **kw), seed=0)
  params = encoder.params_of(model32)
  model16 = encoder.model_from_params(_tiny("bfloat16", residual_dtype=residual, projection_dtype=projection, **kw),
                                      params)
  rs = np.random.RandomState(0)
  batch = {"input_ids": jnp.asarray(rs.randint(0, 120, (4, 24)), jnp.int32),
           "segment_ids": jnp.ones((4, 24), jnp.int32).at[3, 17:].set(0)}
  obj = diffusion.DiffusionConfig(mask_token_id=127, ce_chunk_size=16)

  def loss_and_grads(model):
    g, st = nnx.split(model)
    fn = lambda st: diffusion.diffusion_loss(nnx.merge(g, st), batch, jax.random.key(1), obj)
    (loss, m), grads = jax.jit(jax.value_and_grad(fn, has_aux=True))(st)
    return float(loss), m, nnx.to_pure_dict(grads)

  l32, m32, g32 = loss_and_grads(model32)
  l16, m16, g16 = loss_and_grads(model16)
  assert abs(l16 - l32) <= 1e-2 * abs(l32), (l16, l32)
  assert float(m16["num_masked"]) == float(m32["num_masked"])  # the same masks: only the precision differs
  flat32 = dict(jax.tree_util.tree_flatten_with_path(g32)[0])
  for path, g in jax.tree_util.tree_flatten_with_path(g16)[0]:
    assert g.dtype == jnp.float32, path  # weight gradients in float32 (the parameters' dtype)
    ref = flat32[path]
    cos = float(jnp.sum(g * ref) / (jnp.linalg.norm(g) * jnp.linalg.norm(ref) + 1e-30))
    assert cos > 0.99, (jax.tree_util.keystr(path), cos)


@pytest.mark.parametrize("residual,dtype", [("float32", jnp.float32), ("compute", BF16)])
def test_bf16_encoder_residual_stream_has_the_configured_dtype(residual, dtype):
  cfg = _tiny("bfloat16", residual_dtype=residual)
  model = encoder.create_model(cfg, seed=0)
  ids = jnp.zeros((2, 8), jnp.int32)
  jaxpr = jax.make_jaxpr(lambda i: model(i))(ids)
  scan = next(e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan")
  carry = scan.outvars[0]
  assert carry.aval.dtype == dtype  # the residual carried across layers
  assert model(ids).dtype == BF16  # the encoder's output is in the compute dtype (its documented contract)


def _dot_outputs(jaxpr) -> list:
  """Output dtypes of every dot_general in a jaxpr, sub-jaxprs (scan, custom_vjp, remat) included."""
  out = []
  for e in jaxpr.eqns:
    if e.primitive.name == "dot_general":
      out.append(jnp.dtype(e.outvars[0].aval.dtype))
    for v in e.params.values():
      for sub in (v if isinstance(v, (tuple, list)) else (v,)):
        sub = sub if hasattr(sub, "eqns") else getattr(sub, "jaxpr", None)
        if sub is not None and hasattr(sub, "eqns"):
          out += _dot_outputs(sub)
  return out


@pytest.mark.parametrize("projection", ["float32", "compute"])
def test_bf16_projection_outputs_have_the_configured_dtype(projection):
  model = encoder.create_model(_tiny("bfloat16", projection_dtype=projection, attention_impl="xla"), seed=0)
  ids = jnp.zeros((2, 8), jnp.int32)
  outs = _dot_outputs(jax.make_jaxpr(lambda i: model(i))(ids).jaxpr)
  want = jnp.dtype(jnp.float32 if projection == "float32" else BF16)
  # the scanned layer's seven projections (q, k, v, o, gate, up, down) plus attention's two dots
  assert len(outs) == 9 and outs.count(want) >= 7, outs
  # float32 compute ignores the option: the parity path is one program
  f32 = lambda pd: str(jax.make_jaxpr(encoder.create_model(
      _tiny("float32", projection_dtype=pd, attention_impl="xla"), seed=0))(ids))
  assert f32("compute") == f32("float32")


def test_residual_dtype_is_named_when_unknown():
  with pytest.raises(ValueError, match=r"model.residual_dtype='bfloat16' is not one of \('float32', 'compute'\)"):
    _tiny("bfloat16", residual_dtype="bfloat16")
  with pytest.raises(ValueError, match=r"model.projection_dtype='bf16' is not one of \('float32', 'compute'\)"):
    _tiny("bfloat16", projection_dtype="bf16")
