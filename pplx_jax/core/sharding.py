"""Mesh from config, logical-axis rules, size validation, and host-local -> global batches.

Parameters and activations carry *logical* axis names only ("embed", "mlp", "act_batch", ...). The rules in
`config.sharding.rules` map them onto the mesh axes `data`, `fsdp`, `tensor` (and any extra axis a config adds),
so changing a parallelism layout is a config change, never a model change.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.core import spmd as flax_spmd
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# FSDP shards weights along "embed" and the batch along data x fsdp; tensor parallelism splits heads, MLP and
# vocabulary. Activation names are distinct from parameter names so one mesh axis never appears twice in a spec.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)


def rules_from_config(rules: Iterable[Sequence[Any]] | None) -> tuple[tuple[str, Any], ...]:
  if rules is None:
    return DEFAULT_RULES
  out = []
  for i, rule in enumerate(rules):
    if len(rule) != 2:
      raise ValueError(f"sharding.rules[{i}]={rule!r} must be a (logical_name, mesh_axes) pair")
    name, axes = rule
    out.append((str(name), tuple(axes) if isinstance(axes, list) else axes))
  return tuple(out)


def resolve_mesh_shape(mesh_cfg: Mapping[str, int], num_devices: int) -> dict[str, int]:
  """Sizes per axis with one -1 meaning "all remaining devices"; the product must equal the device count."""
  shape = {k: int(v) for k, v in dict(mesh_cfg).items()}
  for axis in MESH_AXES:
    shape.setdefault(axis, 1)
  fill = [k for k, v in shape.items() if v == -1]
  if len(fill) > 1:
    raise ValueError(f"mesh: at most one axis may be -1, got {fill} in {shape}")
  bad = {k: v for k, v in shape.items() if v == 0 or v < -1}
  if bad:
    raise ValueError(f"mesh: axis sizes must be positive or -1, got {bad}")
  fixed = math.prod(v for v in shape.values() if v != -1)
  if fill:
    if num_devices % fixed:
      raise ValueError(f"mesh: {num_devices} devices are not divisible by the fixed axes {shape} (product {fixed})")
    shape[fill[0]] = num_devices // fixed
  elif fixed != num_devices:
    raise ValueError(f"mesh: axis sizes {shape} multiply to {fixed}, but there are {num_devices} devices")
  return shape


def make_mesh(mesh_cfg: Mapping[str, int] | None = None, devices: Sequence[Any] | None = None) -> Mesh:
  devices = list(devices if devices is not None else jax.devices())
  shape = resolve_mesh_shape(mesh_cfg or {"fsdp": -1}, len(devices))
  names = tuple(shape)
  # Auto axes: classic GSPMD propagation (jax >= 0.10 defaults to Explicit, which rejects e.g. the embedding gather).
  return jax.make_mesh(tuple(shape.values()), names, axis_types=(AxisType.Auto,) * len(names), devices=devices)


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES):
  """Mesh + logical rules for building, tracing and running models."""
  with jax.set_mesh(mesh), nnx.logical_axis_rules(tuple(rules)):
    yield


def logical_to_spec(names: Sequence[str | None], rules: Sequence[tuple[str, Any]] | None = None) -> P:
  rules = tuple(rules) if rules is not None else tuple(flax_spmd.get_logical_axis_rules())
  table = dict(rules)
  return P(*(table.get(n) if n is not None else None for n in names))


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """`with_sharding_constraint` by logical names; a no-op outside a mesh (single-device tests, plain calls)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty or not flax_spmd.get_logical_axis_rules():
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(names))


def mesh_axes(logical: str) -> tuple[str, ...]:
  """The mesh axes the active rules map a logical name onto (empty when it is replicated or no rules are set)."""
  axes = dict(flax_spmd.get_logical_axis_rules()).get(logical)
  return (axes,) if isinstance(axes, str) else tuple(axes or ())


def batch_sharding(mesh: Mesh, rules: Sequence[tuple[str, Any]], ndim: int = 2) -> NamedSharding:
  """Sharding of a [batch, ...] input array: batch over the rule for act_batch, the rest replicated."""
  return NamedSharding(mesh, logical_to_spec(("act_batch",) + (None,) * (ndim - 1), rules))


def batch_divisor(mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> int:
  axes = dict(rules).get("act_batch")
  axes = (axes,) if isinstance(axes, str) else (axes or ())
  return math.prod(mesh.shape[a] for a in axes)


def host_local_to_global(batch: Mapping[str, np.ndarray], mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> dict:
  """Each process passes only its own rows; returns global arrays sharded over the batch axes."""
  out = {}
  for key, local in batch.items():
    local = np.asarray(local)
    sharding = batch_sharding(mesh, rules, local.ndim)
    global_shape = (local.shape[0] * jax.process_count(),) + local.shape[1:]
    out[key] = jax.make_array_from_process_local_data(sharding, local, global_shape)
  return out


def param_shardings(abstract_state, mesh: Mesh, rules: Sequence[tuple[str, Any]]):
  """NamedShardings for an nnx.State of (abstract) variables carrying `out_sharding` logical names."""
  with nnx.logical_axis_rules(tuple(rules)):
    specs = nnx.get_partition_spec(abstract_state)
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def validate_param_sharding(abstract_state, mesh_shape: Mapping[str, int], rules: Sequence[tuple[str, Any]]) -> None:
  """Every sharded dimension must divide evenly; the message names the tensor, its shape and the mesh axes."""
  problems = []
  table = dict(rules)
  for path, var in nnx.to_flat_state(abstract_state):
    names = var.get_metadata().get("out_sharding")
    if not names:
      continue
    shape = var.value.shape
    used = []
    for dim, name in zip(shape, names):
      axes = table.get(name)
      axes = (axes,) if isinstance(axes, str) else (axes or ())
      size = math.prod(mesh_shape.get(a, 1) for a in axes)
      used += [a for a in axes if mesh_shape.get(a, 1) > 1]
      if size > 1 and dim % size:
        problems.append(f"{'.'.join(map(str, path))}: dimension {name!r} of size {dim} is not divisible by mesh axes "
                        f"{axes} of total size {size} (shape {tuple(shape)})")
    if len(used) != len(set(used)):
      problems.append(f"{'.'.join(map(str, path))}: mesh axis used twice in {names} -> {used}")
  if problems:
    raise ValueError("sharding rules do not fit the model:\n  " + "\n  ".join(problems))


def validate_layout(model_cfg, mesh_shape: Mapping[str, int], rules: Sequence[tuple[str, Any]],
                    global_batch: int | None = None, num_devices: int | None = None, batch_chunks: int = 1) -> None:
  """Cheap, shape-only checks that run before anything compiles. A -1 axis is resolved against `num_devices`
  (default: all devices). batch_chunks: GradCache chunks, each of global_batch / batch_chunks rows spread over all
  batch shards (objectives/gradcache.py), so the rows of one chunk must divide too."""
  if any(int(v) == -1 for v in mesh_shape.values()):
    mesh_shape = resolve_mesh_shape(mesh_shape, num_devices if num_devices is not None else jax.device_count())
  table = dict(rules)
  problems = []

  def size_of(name):
    axes = table.get(name)
    axes = (axes,) if isinstance(axes, str) else (axes or ())
    return axes, math.prod(mesh_shape.get(a, 1) for a in axes)

  for logical, value, what in (("q_heads", model_cfg.num_heads, "model.num_heads"),
                               ("kv_heads", model_cfg.num_kv_heads, "model.num_kv_heads"),
                               ("mlp", model_cfg.mlp_dim, "model.mlp_dim"),
                               ("vocab", model_cfg.vocab_size, "model.vocab_size"),
                               ("embed", model_cfg.hidden_size, "model.hidden_size")):
    axes, n = size_of(logical)
    if n > 1 and value % n:
      problems.append(f"{what}={value} is not divisible by mesh axes {axes} of size {n} (rule for {logical!r})")
  if global_batch is not None:
    axes, n = size_of("act_batch")
    if global_batch < n:
      problems.append(f"global batch {global_batch} is smaller than the {n} batch shards of mesh axes {axes}")
    elif global_batch % n:
      problems.append(f"global batch {global_batch} is not divisible by the batch mesh axes {axes} of size {n}")
    elif batch_chunks > 1 and (global_batch % batch_chunks or (global_batch // batch_chunks) % n):
      problems.append(f"global batch {global_batch} in {batch_chunks} GradCache chunks gives "
                      f"{global_batch / batch_chunks:g} rows per chunk, which must be a whole multiple of the {n} "
                      f"batch shards of mesh axes {axes} (every chunk is spread over all of them)")
  if problems:
    raise ValueError("config cannot run on this mesh " + str(dict(mesh_shape)) + ":\n  " + "\n  ".join(problems))


def to_dtype(name: str):
  return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]
