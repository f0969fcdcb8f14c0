"""Sharding on 8 fake CPU devices (see conftest.py): sharded == single-device, born-sharded init, layout
validation messages, a Qwen3-4B memory estimate from shapes alone, and host-local -> global batches."""

from __future__ import annotations

import functools
import math

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from pplx_jax.core import sharding
from pplx_jax.core.model_config import ModelConfig
from pplx_jax.models import encoder

RULES = sharding.DEFAULT_RULES
SEED = 11
# Every sharded size divides 8 (fsdp) and 4 (tensor): hidden 64, heads 8, kv heads 4, mlp 128, vocab 256.
CFG = ModelConfig(vocab_size=256, hidden_size=64, num_layers=2, num_heads=8, num_kv_heads=4, head_dim=16, mlp_dim=128,
                  rope_theta=10_000.0, tie_embeddings=False, compute_dtype="float32", remat="none", scan_layers=True)
MESHES = [{"data": 8}, {"fsdp": 8}, {"data": 2, "fsdp": 2, "tensor": 2}, {"fsdp": 2, "tensor": 4},
          {"data": 1, "fsdp": -1, "tensor": 2}]
BATCH, LENGTH = 8, 16


def mesh_id(shape):
  return ",".join(f"{k}{v}" for k, v in shape.items())


def require_8_devices():
  assert jax.device_count() == 8, (
      f"sharding tests need 8 devices, found {jax.device_count()}: XLA_FLAGS="
      "--xla_force_host_platform_device_count=8 must be set before jax is imported (tests/conftest.py does this)")


def test_eight_fake_devices():
  require_8_devices()


def flat(params) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}


_forward = nnx.jit(lambda model, ids, mask: model(ids, mask))


@functools.lru_cache(maxsize=None)
def reference():
  """Single device: the batch, the parameters (numpy) and the forward output."""
  rng = np.random.RandomState(0)
  ids = rng.randint(0, CFG.vocab_size, (BATCH, LENGTH)).astype(np.int32)
  mask = np.ones((BATCH, LENGTH), np.int32)
  mask[1, 10:] = 0
  mask[6, :5] = 0
  model = encoder.create_model(CFG, SEED)
  out = np.asarray(_forward(model, ids, mask))
  return ids, mask, jax.tree.map(np.asarray, flat(encoder.params_of(model))), out


@functools.lru_cache(maxsize=None)
def sharded_run(shape_items: tuple):
  """Build the model under the mesh, shard the batch, run the jitted forward; returns everything to inspect."""
  require_8_devices()
  shape = dict(shape_items)
  ids, mask, _, _ = reference()
  mesh = sharding.make_mesh(shape)
  resolved = sharding.resolve_mesh_shape(shape, jax.device_count())
  sharding.validate_layout(CFG, resolved, RULES, global_batch=BATCH)
  with sharding.activate(mesh, RULES):
    sharding.validate_param_sharding(nnx.state(encoder.abstract_model(CFG)), resolved, RULES)
    model = encoder.create_model(CFG, SEED)
    batch = sharding.host_local_to_global({"ids": ids, "mask": mask}, mesh, RULES)
    out = _forward(model, batch["ids"], batch["mask"])
  return mesh, resolved, model, batch, out


@pytest.mark.parametrize("shape", MESHES, ids=mesh_id)
def test_sharded_forward_matches_single_device(shape):
  ids, mask, _, ref = reference()
  mesh, resolved, model, batch, out = sharded_run(tuple(shape.items()))
  f, t = resolved["fsdp"], resolved["tensor"]
  batch_shards = resolved["data"] * f

  # Parameters are really sharded as the rules say.
  emb = model.embed_tokens[...]
  # (is_equivalent_to: jax normalises away axes of size 1, e.g. P("tensor", "fsdp") on {data: 8} reads P())
  assert emb.sharding.is_equivalent_to(NamedSharding(mesh, P("tensor", "fsdp")), 2)
  assert emb.addressable_shards[0].data.shape == (CFG.vocab_size // t, CFG.hidden_size // f)
  q = model.layers.q_proj[...]
  assert q.sharding.is_equivalent_to(NamedSharding(mesh, P(None, "fsdp", "tensor", None)), 4)
  assert q.addressable_shards[0].data.shape == (CFG.num_layers, CFG.hidden_size // f, CFG.num_heads // t, CFG.head_dim)
  down = model.layers.down_proj[...]
  assert down.addressable_shards[0].data.shape == (CFG.num_layers, CFG.mlp_dim // t, CFG.hidden_size // f)
  assert model.norm[...].sharding.is_fully_replicated
  if f * t > 1:
    assert math.prod(emb.addressable_shards[0].data.shape) < math.prod(emb.shape)

  # The batch went in sharded over data x fsdp, and so did the output.
  assert batch["ids"].sharding == NamedSharding(mesh, P(("data", "fsdp"), None))
  assert batch["ids"].addressable_shards[0].data.shape == (BATCH // batch_shards, LENGTH)
  assert out.sharding.is_equivalent_to(NamedSharding(mesh, P(("data", "fsdp"), None, None)), 3)

  real = mask.astype(bool)
  d = float(np.abs(np.asarray(out) - ref)[real].max())
  print(f"mesh {resolved}: sharded vs single-device max|Δ| {d:.3g}")
  assert d <= 1e-5


@functools.lru_cache(maxsize=None)
def jitted_single_device_init():
  """The same init computation create_model compiles under a mesh, compiled for one device."""
  with nnx.use_eager_sharding(False):
    model = nnx.jit(lambda: encoder.Encoder(CFG, rngs=nnx.Rngs(SEED)))()
  return jax.tree.map(np.asarray, flat(encoder.params_of(model)))


@pytest.mark.parametrize("shape", MESHES, ids=mesh_id)
def test_create_model_under_mesh_gives_identical_parameters(shape):
  _, _, eager_params, _ = reference()
  single = jitted_single_device_init()
  _, _, model, _, _ = sharded_run(tuple(shape.items()))
  got = flat(encoder.params_of(model))
  assert got.keys() == single.keys() == eager_params.keys()
  for k, v in got.items():
    assert isinstance(v, jax.Array) and len(v.sharding.device_set) == 8, k
    # Bit for bit: sharding the init changes no value (partitionable threefry).
    np.testing.assert_array_equal(np.asarray(v), single[k], err_msg=k)
    np.testing.assert_array_equal(np.asarray(v), eager_params[k], err_msg=k)


def test_create_model_single_device_is_bitwise_the_mesh_init():
  _, _, eager_params, _ = reference()
  single = jitted_single_device_init()
  for k in single:
    np.testing.assert_array_equal(eager_params[k], single[k], err_msg=k)


# ---------------------------------------------------------------------------------------------------- validation


def test_validate_layout_names_the_numbers():
  shape = {"data": 2, "fsdp": 2, "tensor": 2}
  sharding.validate_layout(CFG, shape, RULES, global_batch=8)  # fits
  with pytest.raises(ValueError, match=r"global batch 6 is not divisible by the batch mesh axes "
                                       r"\('data', 'fsdp'\) of size 4"):
    sharding.validate_layout(CFG, shape, RULES, global_batch=6)

  tensor4 = {"data": 1, "fsdp": 2, "tensor": 4}
  sharding.validate_layout(CFG, tensor4, RULES, global_batch=8)
  with pytest.raises(ValueError, match=r"model\.num_heads=6 is not divisible by mesh axes \('tensor',\) of size 4"):
    sharding.validate_layout(CFG.replace(num_heads=6, num_kv_heads=2), tensor4, RULES)
  with pytest.raises(ValueError, match=r"model\.num_kv_heads=2 is not divisible by mesh axes \('tensor',\) of size 4"
                     ) as e:
    sharding.validate_layout(CFG.replace(num_kv_heads=2), tensor4, RULES)
  assert "num_heads=" not in str(e.value)  # 8 heads divide 4: only the kv heads are named
  with pytest.raises(ValueError, match=r"model\.vocab_size=250 is not divisible"):
    sharding.validate_layout(CFG.replace(vocab_size=250), tensor4, RULES)


def test_mesh_shape_errors_name_the_numbers():
  require_8_devices()
  with pytest.raises(ValueError, match=r"multiply to 6, but there are 8 devices"):
    sharding.make_mesh({"data": 3, "fsdp": 2})
  with pytest.raises(ValueError, match=r"at most one axis may be -1, got \['data', 'fsdp'\]"):
    sharding.make_mesh({"data": -1, "fsdp": -1})
  with pytest.raises(ValueError, match=r"8 devices are not divisible by the fixed axes .*product 3"):
    sharding.make_mesh({"fsdp": -1, "tensor": 3})
  assert sharding.resolve_mesh_shape({"data": 1, "fsdp": -1, "tensor": 2}, 8) == {"data": 1, "fsdp": 4, "tensor": 2}


def test_validate_layout_gradcache_chunks_must_split_over_the_batch_shards():
  shape = {"data": 2, "fsdp": 4, "tensor": 1}
  sharding.validate_layout(CFG, shape, RULES, global_batch=64, batch_chunks=8)  # 8 rows per chunk on 8 shards
  with pytest.raises(ValueError, match=r"64 in 16 GradCache chunks gives 4 rows per chunk.*8 batch shards"):
    sharding.validate_layout(CFG, shape, RULES, global_batch=64, batch_chunks=16)


def test_validate_layout_with_an_unresolved_fill_axis():
  with pytest.raises(ValueError, match=r"model\.hidden_size=62 is not divisible by mesh axes \(.fsdp.,\) of size 4"):
    sharding.validate_layout(CFG.replace(hidden_size=62), {"fsdp": -1, "tensor": 2}, RULES, global_batch=8)


def test_validate_param_sharding_names_the_tensor():
  sharding.validate_param_sharding(nnx.state(encoder.abstract_model(CFG)), {"fsdp": 2, "tensor": 4}, RULES)
  bad = nnx.state(encoder.abstract_model(CFG.replace(num_heads=6, num_kv_heads=2)))
  with pytest.raises(ValueError) as e:
    sharding.validate_param_sharding(bad, {"fsdp": 2, "tensor": 4}, RULES)
  msg = str(e.value)
  assert "layers.q_proj: dimension 'q_heads' of size 6 is not divisible by mesh axes ('tensor',) of total size 4" in msg
  assert "layers.o_proj: dimension 'q_heads' of size 6" in msg
  assert "layers.k_proj: dimension 'kv_heads' of size 2" in msg and "layers.v_proj" in msg
  assert "embed_tokens" not in msg and "gate_proj" not in msg
  with pytest.raises(ValueError, match=r"embed_tokens: dimension 'embed' of size 64 is not divisible by mesh axes "
                                       r"\('fsdp',\) of total size 3 \(shape \(256, 64\)\)"):
    sharding.validate_param_sharding(nnx.state(encoder.abstract_model(CFG)), {"fsdp": 3}, RULES)


# ---------------------------------------------------------------------------------------------------- memory


@pytest.mark.parametrize("shape", [{"fsdp": 8}, {"fsdp": 4, "tensor": 2}], ids=mesh_id)
def test_qwen3_4b_bytes_per_device_from_shapes(shape):
  require_8_devices()
  import configs.model.qwen3_4b as qwen3_4b

  cfg = ModelConfig.from_dict(qwen3_4b.get_config())
  mesh = sharding.make_mesh(shape)
  resolved = sharding.resolve_mesh_shape(shape, 8)
  sharding.validate_layout(cfg, resolved, RULES, global_batch=8)
  with sharding.activate(mesh, RULES):
    abstract = nnx.eval_shape(lambda: encoder.create_model(cfg))  # traces the sharded init, allocates nothing
  state = flat(nnx.to_pure_dict(nnx.state(abstract, nnx.Param)))
  assert all(isinstance(s, jax.ShapeDtypeStruct) for s in state.values())
  per_device = sum(math.prod(s.sharding.shard_shape(s.shape)) * s.dtype.itemsize for s in state.values())

  # The same from the abstract model + param_shardings (the path restores and converters take).
  abstract_state = nnx.state(encoder.abstract_model(cfg), nnx.Param)
  sharding.validate_param_sharding(abstract_state, resolved, RULES)
  shardings = flat(nnx.to_pure_dict(sharding.param_shardings(abstract_state, mesh, RULES)))
  shapes = flat(nnx.to_pure_dict(abstract_state))
  assert shardings.keys() == state.keys()
  for k in state:
    assert shardings[k].spec == state[k].sharding.spec, k
  per_device_2 = sum(math.prod(shardings[k].shard_shape(shapes[k].shape)) * shapes[k].dtype.itemsize for k in shapes)

  # By hand: every matrix divides 8 ways; the RMSNorm scales (2 per layer of size d, q/k norms of size head_dim,
  # the final norm) are replicated.
  d, hd, layers = cfg.hidden_size, cfg.head_dim, cfg.num_layers
  norms = layers * (2 * d + 2 * hd) + d
  total = cfg.num_params()
  assert total == 4_022_468_096 and norms == 196_096 and (total - norms) % 8 == 0
  expected = ((total - norms) // 8 + norms) * 4
  print(f"Qwen3-4B fp32 on {resolved}: {per_device:,} bytes/device ({per_device / 2**30:.3f} GiB); "
        f"total {total * 4:,} bytes, total/8 = {total * 4 // 8:,}, replicated norms {norms * 4:,} bytes")
  assert per_device == per_device_2 == expected == 2_011_920_384


# ---------------------------------------------------------------------------------------------------- batches


def test_host_local_to_global():
  require_8_devices()
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  local = {"ids": np.arange(8 * 5, dtype=np.int32).reshape(8, 5),
           "emb": np.random.RandomState(0).randn(8, 3, 2).astype(np.float32)}
  out = sharding.host_local_to_global(local, mesh, RULES)
  assert out.keys() == local.keys()
  assert out["ids"].sharding == NamedSharding(mesh, P(("data", "fsdp"), None))
  assert out["emb"].sharding == NamedSharding(mesh, P(("data", "fsdp"), None, None))
  for k in local:
    assert isinstance(out[k], jax.Array) and out[k].shape == local[k].shape and out[k].dtype == local[k].dtype
    np.testing.assert_array_equal(np.asarray(out[k]), local[k])
    assert len(out[k].addressable_shards) == 8
    for shard in out[k].addressable_shards:  # 4 batch shards of 2 rows, each held by the 2 tensor devices
      assert shard.data.shape[0] == 2
      np.testing.assert_array_equal(np.asarray(shard.data), local[k][shard.index])


def test_optimizer_state_is_sharded_like_the_parameters():
  """AdamW's moments must follow their parameters' FSDP sharding (a plain jit(tx.init) replicates them: two full
  float32 model copies per device)."""
  require_8_devices()
  from pplx_jax.stages import optimizer
  mesh = sharding.make_mesh({"data": 1, "fsdp": 8, "tensor": 1})
  with sharding.activate(mesh, RULES):
    params = encoder.params_of(encoder.create_model(CFG))
  tx, _ = optimizer.make_optimizer(optimizer.default_config(), 100)
  state = optimizer.init_sharded(tx, params)
  by_path = {optimizer._dict_path(k): v for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  matched = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    p = by_path.get(optimizer._dict_path(path))
    if p is not None and p.shape == leaf.shape:
      assert leaf.sharding.is_equivalent_to(p.sharding, leaf.ndim), path
      matched += 1
    else:
      assert leaf.ndim == 0 and leaf.sharding.is_fully_replicated, path
  assert matched == 2 * len(by_path)  # mu and nu of every parameter
  emb = params["embed_tokens"]
  assert not emb.sharding.is_fully_replicated  # the test means something: FSDP does shard this parameter
