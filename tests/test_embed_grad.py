"""The embedding lookup's custom gradient (models/encoder.py `embed_lookup`) equals the plain lookup's, on one
device and sharded over 8 (the table's gradient born in the parameter's sharding)."""

import jax
import jax.numpy as jnp
import numpy as np

from pplx_jax.core import sharding as shd
from pplx_jax.models.encoder import embed_lookup


def _loss(lookup, table, ids, w):
  return jnp.sum(jnp.tanh(lookup(table, ids)) * w)


def test_embed_lookup_gradient_equals_the_plain_lookup():
  rng = np.random.default_rng(0)
  table = jnp.asarray(rng.normal(size=(64, 16)), jnp.float32)
  ids = jnp.asarray(rng.integers(0, 64, size=(8, 12)), jnp.int32).at[0, :4].set(7)  # repeated ids accumulate
  w = jnp.asarray(rng.normal(size=(8, 12, 16)), jnp.float32)
  plain = jax.grad(lambda t: _loss(lambda a, i: jnp.take(a, i, axis=0), t, ids, w))(table)
  ours = jax.grad(lambda t: _loss(embed_lookup, t, ids, w))(table)
  np.testing.assert_allclose(ours, plain, rtol=1e-6, atol=1e-6)
  assert np.abs(plain).sum() > 0

  assert jax.device_count() == 8
  mesh = shd.make_mesh(dict(data=2, fsdp=4, tensor=1), jax.devices())
  rules = shd.rules_from_config(None)
  with shd.activate(mesh, rules):
    fn = jax.jit(jax.grad(lambda t: _loss(embed_lookup, t, ids, w)))
    sharded = fn(table)
    want = shd.logical_to_spec(("vocab", "embed"), rules)
    bf16 = jax.jit(jax.grad(lambda t: _loss(embed_lookup, t, ids, w.astype(jnp.bfloat16))))(table)
  np.testing.assert_allclose(np.asarray(sharded), plain, rtol=1e-5, atol=1e-6)
  # born in the parameter's sharding (size-1 mesh axes drop out of the spec, so compare the shards)
  want_shard = jax.sharding.NamedSharding(mesh, want).shard_shape(table.shape)
  assert want_shard == (64, 4) and sharded.sharding.shard_shape(table.shape) == want_shard, sharded.sharding
  assert bf16.dtype == jnp.float32
