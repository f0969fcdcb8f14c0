"""Splash attention (TPU Pallas, run here in interpret mode) against the XLA reference, and the `auto` dispatch.

The batch mixes what training sends: packed segments (pretraining rows), right padding (segment id 0), a row that is
one whole segment, and grouped-query heads (4 query heads over 2 KV heads). The compiled-for-TPU side of splash is
checked in tests/test_aot.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pplx_jax.core import sharding as shd
from pplx_jax.models import attention as attn

B, S, N, K, H = 4, 256, 4, 2, 32


def _inputs(dtype=jnp.float32):
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(B, S, n, H)), dtype) for n in (N, K, K))
  seg = np.zeros((B, S), np.int32)
  seg[0, :100], seg[0, 100:200], seg[0, 200:250] = 1, 2, 3  # three packed documents, then padding
  seg[1, :] = 1  # one full document
  seg[2, :37] = 1  # mostly padding
  seg[3, :128], seg[3, 128:] = 5, 6  # two documents, no padding
  return q, k, v, jnp.asarray(seg)


def _loss(impl, causal):
  def f(q, k, v, seg):
    out = attn.dot_product_attention(q, k, v, seg, causal=causal, impl=impl)
    real = (seg > 0)[:, :, None, None]  # what the model's losses see: padded positions are never pooled or scored
    return jnp.sum(jnp.where(real, jnp.sin(out), 0.0)), out
  return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))


@pytest.mark.parametrize("causal", [False, True])
def test_splash_matches_xla_forward_and_gradient(causal):
  q, k, v, seg = _inputs()
  (_, ref), ref_grads = _loss("xla", causal)(q, k, v, seg)
  (_, out), grads = _loss("splash", causal)(q, k, v, seg)
  # every position, padding included: padding rows attend padding in both implementations
  np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-5)
  for name, g, r in zip("qkv", grads, ref_grads):
    assert float(jnp.max(jnp.abs(r))) > 1e-3, f"d{name} of the reference is ~0: the check would be vacuous"
    np.testing.assert_allclose(g, r, atol=2e-5, rtol=1e-5, err_msg=f"d{name}")


def test_splash_segments_do_not_leak():
  """Changing one packed document's keys/values changes no other document's outputs."""
  q, k, v, seg = _inputs()
  other = (seg[0] == 2)[None, :, None, None] & (jnp.arange(B) == 0)[:, None, None, None]
  out = attn.splash_attention(q, k, v, seg, causal=False)
  out2 = attn.splash_attention(q, jnp.where(other, k + 1.0, k), jnp.where(other, v * 3.0, v), seg, causal=False)
  changed = np.any(np.abs(np.asarray(out2 - out)) > 1e-6, axis=(2, 3))
  np.testing.assert_array_equal(changed[0], np.asarray(seg[0] == 2))
  assert not changed[1:].any()


def test_splash_sharded_matches_xla():
  """Under a batch x heads mesh (shard_map over data/fsdp and tensor), inside jit with sharded inputs."""
  q, k, v, seg = _inputs()
  mesh = shd.make_mesh({"data": 1, "fsdp": 4, "tensor": 2}, jax.devices()[:8])
  with shd.activate(mesh, shd.DEFAULT_RULES):
    qkv = jax.sharding.NamedSharding(mesh, shd.logical_to_spec(("act_batch", None, "act_heads", None)))
    q, k, v = (jax.device_put(x, qkv) for x in (q, k, v))
    seg = jax.device_put(seg, shd.batch_sharding(mesh, shd.DEFAULT_RULES))
    out = jax.jit(lambda *a: attn.dot_product_attention(*a, causal=False, impl="splash"))(q, k, v, seg)
    hlo = jax.jit(lambda *a: attn.dot_product_attention(*a, causal=False, impl="splash")).lower(
        q, k, v, seg).as_text()
  ref = attn.dot_product_attention(*(np.asarray(x) for x in (q, k, v, seg)), causal=False, impl="xla")
  np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-5)
  assert "shard_map" in hlo or "sdy.manual_computation" in hlo or "custom_call" in hlo


def test_splash_rejects_unaligned_sequence():
  q, k, v, seg = _inputs()
  with pytest.raises(ValueError, match="multiple of 128"):
    attn.splash_attention(q[:, :100], k[:, :100], v[:, :100], seg[:, :100], causal=False)


def test_auto_dispatch_follows_the_target_platform():
  assert attn.resolve_impl("auto", jnp.bfloat16) == "xla"  # this CPU
  assert attn.resolve_impl("splash") == "splash"
  from pplx_jax.stages import aot
  devices, _, _ = aot.topology_devices("v5e:2x2")
  mesh = shd.make_mesh({"fsdp": -1}, devices)
  with shd.activate(mesh, shd.DEFAULT_RULES):
    assert attn.target_platform() == "tpu"
    assert attn.resolve_impl("auto", jnp.bfloat16) == "splash"
    # auto on TPU falls back to the reference for lengths splash cannot tile (explicit "splash" raises instead)
    def traced(s):
      q = jax.ShapeDtypeStruct((8, s, N, H), jnp.bfloat16)
      kv = jax.ShapeDtypeStruct((8, s, K, H), jnp.bfloat16)
      seg = jax.ShapeDtypeStruct((8, s), jnp.int32)
      return jax.jit(lambda *a: attn.dot_product_attention(*a, causal=False, impl="auto")).trace(
          q, kv, kv, seg).jaxpr.pretty_print()

    assert "pallas_call" in traced(128)
    assert "pallas_call" not in traced(48) and "dot_general" in traced(48)
