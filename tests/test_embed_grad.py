"""The embedding lookup (models/encoder.py `embed_lookup`): equal to the plain lookup, value and gradient, on one
device and sharded over 8 in several layouts, and no chip ever holds the whole [V, D] table or its gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding

from pplx_jax.core import sharding as shd
from pplx_jax.models.encoder import embed_lookup

V, D = 96, 16


def _loss(lookup, table, ids, w):
  return jnp.sum(jnp.tanh(lookup(table, ids)) * w)


def _plain(table, ids):
  return jnp.take(table, ids, axis=0)


def _data():
  rng = np.random.default_rng(0)
  table = jnp.asarray(rng.normal(size=(V, D)), jnp.float32)
  ids = jnp.asarray(rng.integers(0, V, size=(8, 12)), jnp.int32).at[0, :4].set(7).at[5, 3:9].set(7)  # repeats add
  w = jnp.asarray(rng.normal(size=(8, 12, D)), jnp.float32)
  return table, ids, w


def test_embed_lookup_on_one_device_is_the_plain_lookup():
  table, ids, w = _data()
  np.testing.assert_array_equal(embed_lookup(table, ids), _plain(table, ids))
  plain = jax.grad(lambda t: _loss(_plain, t, ids, w))(table)
  np.testing.assert_allclose(jax.grad(lambda t: _loss(embed_lookup, t, ids, w))(table), plain, rtol=1e-6, atol=1e-6)
  assert np.abs(plain[7]).sum() > 0


@pytest.mark.parametrize("mesh_shape", [dict(data=1, fsdp=8, tensor=1), dict(data=2, fsdp=4, tensor=1),
                                        dict(data=1, fsdp=4, tensor=2), dict(data=2, fsdp=2, tensor=2)])
def test_sharded_embed_lookup_equals_the_plain_lookup_and_never_holds_the_whole_table(mesh_shape):
  table, ids, w = _data()
  want_value = _plain(table, ids)
  want_grad = jax.grad(lambda t: _loss(_plain, t, ids, w))(table)
  assert jax.device_count() == 8
  mesh = shd.make_mesh(mesh_shape, jax.devices())
  rules = shd.rules_from_config(None)
  with shd.activate(mesh, rules):
    param_sharding = NamedSharding(mesh, shd.logical_to_spec(("vocab", "embed"), rules))
    table_sh = jax.device_put(table, param_sharding)
    ids_sh = jax.device_put(ids, shd.batch_sharding(mesh, rules, 2))
    w_sh = jax.device_put(w, shd.batch_sharding(mesh, rules, 3))
    value = jax.jit(embed_lookup)(table_sh, ids_sh)
    grad_fn = jax.jit(jax.grad(lambda t, i, w: _loss(embed_lookup, t, i, w)))
    grad = grad_fn(table_sh, ids_sh, w_sh)
    hlo = grad_fn.lower(table_sh, ids_sh, w_sh).compile().as_text()
    plain_hlo = jax.jit(jax.grad(lambda t, i, w: _loss(_plain, t, i, w))).lower(table_sh, ids_sh, w_sh).compile()
  np.testing.assert_array_equal(np.asarray(value), np.asarray(want_value))
  np.testing.assert_allclose(np.asarray(grad), np.asarray(want_grad), rtol=1e-5, atol=1e-6)
  # the gradient is born in the parameter's sharding, and no buffer of the program has the whole table's shape
  assert grad.sharding.shard_shape(table.shape) == param_sharding.shard_shape(table.shape)
  assert f"f32[{V},{D}]" not in hlo
  assert f"f32[{V},{D}]" in plain_hlo.as_text()  # the check can fail: the plain lookup gathers the whole table


def test_layouts_it_does_not_cover_take_the_plain_lookup():
  table, ids, w = _data()
  mesh = shd.make_mesh(dict(data=1, fsdp=8, tensor=1), jax.devices())
  rules = tuple((k, None) if k == "embed" else (k, v) for k, v in shd.rules_from_config(None))  # no FSDP of weights
  with shd.activate(mesh, rules):
    grad = jax.jit(jax.grad(lambda t: _loss(embed_lookup, t, ids, w)))(table)
  np.testing.assert_allclose(np.asarray(grad), jax.grad(lambda t: _loss(_plain, t, ids, w))(table), rtol=1e-5,
                             atol=1e-6)
