"""GradCache (Gao et al. 2021; embedding.md §2.7) as functional JAX: full-batch contrastive gradients with the
encoder activations of one chunk at a time.

The loss depends on the parameters only through the embeddings, so dL/dθ = Σ_chunks vjp(embed at chunk)(dL/de_chunk):

  1. embed the global batch chunk by chunk, keeping nothing but the embeddings (a `lax.scan`, no residuals);
  2. loss and dL/d(embeddings) on the full global batch (`jax.value_and_grad` w.r.t. the embeddings only);
  3. re-encode chunk by chunk under `jax.vjp`, pull that chunk's cached embedding gradient back to the parameters,
     and sum the parameter gradients over chunks in float32 (a second `lax.scan` whose carry is the grads pytree).

The result equals `jax.grad` of the un-chunked `loss(embed(params, all inputs))`; the cost is one extra encoder
forward. Peak memory: one chunk's activations + the embeddings and their gradients + the loss's similarity blocks.
Measured (tests/test_gradcache.py: tiny Qwen3, sequences of 32, 8 devices, 32 rows per chunk, per-device temporaries
from `memory_analysis()`): 3.30 MB at N=64 and 3.35 MB at N=512, against 6.48 MB and 51.7 MB un-chunked.

Chunk layout (the sharding decision). Inputs arrive as global arrays whose leading (batch) axis is split over the
batch mesh axes in contiguous blocks: device r holds rows [r·N/P, (r+1)·N/P). A plain reshape
[N, ...] -> [C, N/C, ...] would make chunk c a contiguous block living on only P/C devices (XLA must then reshuffle
every chunk or run an imbalanced scan). Instead chunk c is the *strided* set of rows {c, c+C, c+2C, ...}:
reshape [N, ...] -> [N/C, C, ...] (the sharded axis stays major, so it is a local reshape) and swap the two leading
axes to [C, N/C, ...], pinned to (None, "act_batch"). Each device then holds N/(C·P) rows of *every* chunk, taken from
its own shard: no communication, every chunk spread evenly over all devices (tests/test_gradcache.py checks both
the rows and the absence of collectives). Un-chunking is the exact inverse, so embeddings come back in the original
row order and labels (query i <-> document i <-> hard negatives [i, :]) never move. Requires N/C divisible by the
number of batch shards.

RNG: the encoder is called twice per chunk (step 1 and step 3) and the two calls must agree. The Qwen3 encoder is
deterministic; an encoder with dropout must take its keys from `inputs` (per-row keys chunk like any other input).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
from flax import nnx
from flax.core import spmd as flax_spmd
from jax.sharding import PartitionSpec as P

from pplx_jax.core import sharding as shd
from pplx_jax.objectives.contrastive import embed

# tower name (the objectives' q, d, h) -> (ids key, mask key) of the contrastive batch (stages/contrastive/data.py
# names the hard negatives n_*). Hard negatives may be [N, K, S] or flattened [N*K, S].
TOWERS: dict[str, tuple[str, str]] = {"q": ("q_ids", "q_mask"), "d": ("d_ids", "d_mask"), "h": ("n_ids", "n_mask")}


def _batch_names(ndim: int, leading: tuple = ()) -> tuple:
  return leading + ("act_batch",) + (None,) * (ndim - len(leading) - 1)


def _mesh_active() -> bool:
  mesh = jax.sharding.get_abstract_mesh()
  return mesh is not None and not mesh.empty and bool(flax_spmd.get_logical_axis_rules())


def _batch_shards() -> int:
  """Number of shards of the "act_batch" axis under the active mesh and rules (1 outside a mesh)."""
  if not _mesh_active():
    return 1
  mesh = jax.sharding.get_abstract_mesh()
  axes = dict(flax_spmd.get_logical_axis_rules()).get("act_batch")
  axes = (axes,) if isinstance(axes, str) else (axes or ())
  return math.prod(mesh.shape[a] for a in axes)


def chunk(x: jax.Array, num_chunks: int) -> jax.Array:
  """[N, ...] -> [num_chunks, N/num_chunks, ...] with chunk c = rows c, c+num_chunks, c+2·num_chunks, ... (strided:
  every chunk keeps the batch axis sharded over all devices, a local reshape of each device's shard)."""
  n = x.shape[0]
  if n % num_chunks:
    raise ValueError(f"GradCache: batch axis of size {n} is not divisible by num_chunks={num_chunks}")
  shards = _batch_shards()
  if (n // num_chunks) % shards:
    raise ValueError(f"GradCache: chunks of {n // num_chunks} rows (batch {n} / num_chunks {num_chunks}) are not "
                     f"divisible by the {shards} batch shards of the mesh; pick num_chunks so that "
                     f"batch / num_chunks is a multiple of {shards}")
  y = x.reshape((n // num_chunks, num_chunks) + x.shape[1:])
  y = shd.constrain(y, _batch_names(y.ndim))
  return shd.constrain(jnp.swapaxes(y, 0, 1), _batch_names(y.ndim, (None,)))


def unchunk(y: jax.Array) -> jax.Array:
  """Inverse of `chunk`: [num_chunks, M, ...] -> [num_chunks·M, ...] in the original row order."""
  c, m = y.shape[:2]
  x = shd.constrain(jnp.swapaxes(y, 0, 1), _batch_names(y.ndim))
  return shd.constrain(x.reshape((c * m,) + y.shape[2:]), _batch_names(y.ndim - 1))


def partition_specs(graphdef, params) -> Any:
  """PartitionSpecs of `params` (pure dict) from the model's logical annotations under the active rules, or None
  outside a mesh. Pins the gradient accumulator of `grad_cached` to the parameters' (FSDP) sharding."""
  if not _mesh_active():
    return None
  model = nnx.merge(graphdef, nnx.State(params))
  return nnx.to_pure_dict(nnx.get_partition_spec(nnx.state(model)))


def grad_cached(embed_fn: Callable[[Any, Any], Any], loss_fn: Callable[[Any], tuple[jax.Array, Any]], params: Any,
                inputs: Any, num_chunks: int, param_specs: Any = None) -> tuple[jax.Array, Any, Any]:
  """(loss, aux, grads) with grads == jax.grad(lambda p: loss_fn(embed_fn(p, inputs))[0])(params).

  embed_fn(params, inputs_chunk) -> embeddings pytree, row-wise: output row r of every leaf belongs to input row r
    (several towers sharing one encoder: return a dict of towers).
  loss_fn(embeddings) -> (loss, aux), over the full global batch of embeddings.
  inputs: pytree of arrays with a leading global-batch axis (leaves may differ in everything else, e.g. [N, Sq],
    [N, Sd], [N, K, Sh]); each leaf is chunked along that axis into `num_chunks` strided chunks (`chunk`).
  param_specs: optional pytree of PartitionSpecs matching `params`. Pass it under a mesh: the float32 accumulator
    is a fresh array, and without a constraint the partitioner may keep it (and the returned grads) replicated —
    a full float32 copy of the model on every device. `loss_and_grad` derives it from the model's annotations.
  Gradients are accumulated in float32 and returned in the parameters' dtypes.
  """
  num_chunks = int(num_chunks)
  if num_chunks < 1:
    raise ValueError(f"GradCache: num_chunks must be >= 1, got {num_chunks}")
  chunks = jax.tree.map(lambda x: chunk(x, num_chunks), inputs)
  frozen = jax.lax.stop_gradient(params)

  # 1. Embeddings only: nothing inside the scan is differentiated, so no activation outlives its chunk.
  def encode(carry, xs):
    return carry, embed_fn(frozen, xs)

  _, emb_chunks = jax.lax.scan(encode, None, chunks)
  embeddings = jax.tree.map(unchunk, emb_chunks)

  # 2. The loss on the global batch and the cached gradient w.r.t. every embedding.
  (loss, aux), emb_grads = jax.value_and_grad(loss_fn, has_aux=True)(embeddings)
  grad_chunks = jax.tree.map(lambda g: chunk(g, num_chunks), emb_grads)

  # 3. Re-encode each chunk with its activations, pull its cached embedding gradient back to the parameters.
  if param_specs is None:
    pin = lambda tree: tree
  else:
    pin = lambda tree: jax.tree.map(lambda s, x: x if s is None else jax.lax.with_sharding_constraint(x, s),
                                    param_specs, tree, is_leaf=lambda s: s is None or isinstance(s, P))

  def backward(acc, xs):
    inputs_c, cotangent = xs
    _, vjp = jax.vjp(lambda p: embed_fn(p, inputs_c), params)
    (g,) = vjp(cotangent)
    return pin(jax.tree.map(lambda a, b: a + b.astype(jnp.float32), acc, pin(g))), None

  zeros = pin(jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params))
  grads, _ = jax.lax.scan(backward, zeros, (chunks, grad_chunks))
  grads = pin(jax.tree.map(lambda g, p: g.astype(jnp.result_type(p)), grads, params))
  return loss, aux, grads


# ---- what a trainer Task calls ----


def embed_towers(model, batch: Mapping[str, jax.Array], towers: Mapping[str, tuple[str, str]] = TOWERS,
                 quantize: str = "int8", pooling: str = "mean") -> dict[str, jax.Array]:
  """{tower: embeddings} of the towers present in `batch`: [n, S] ids give [n, D], [n, K, S] ids give [n, K, D].

  Towers with the same number of rows n and the same length S (typically documents and hard negatives) share one
  encoder call: they are stacked on a new axis 1, [n, 1 + K, S] -> [n·(1 + K), S], which keeps every row on the
  device of its query (a local reshape of batch-sharded arrays; concatenating along axis 0 would move rows between
  devices). One call instead of several: fewer, larger matmuls, one FSDP weight gather per layer, and one encoder
  copy in the compiled program. A missing mask means all tokens are real.
  """
  groups: dict[tuple[int, int], list] = {}
  for name, (ids_key, mask_key) in towers.items():
    if ids_key not in batch:
      continue
    ids = batch[ids_key]
    mask = batch[mask_key] if mask_key in batch else jnp.ones_like(ids)
    n, s = ids.shape[0], ids.shape[-1]
    groups.setdefault((n, s), []).append((name, ids.shape[:-1], ids.reshape(n, -1, s), mask.reshape(n, -1, s)))
  out = {}
  for (n, s), members in groups.items():
    ids = jnp.concatenate([m[2] for m in members], axis=1) if len(members) > 1 else members[0][2]
    mask = jnp.concatenate([m[3] for m in members], axis=1) if len(members) > 1 else members[0][3]
    per_row = ids.shape[1]
    flat_ids = shd.constrain(ids.reshape(n * per_row, s), ("act_batch", None))
    flat_mask = shd.constrain(mask.reshape(n * per_row, s), ("act_batch", None))
    e = embed(model, flat_ids, flat_mask, quantize, pooling)
    e = e.reshape(n, per_row, e.shape[-1])
    start = 0
    for name, lead, m_ids, _ in members:
      k = m_ids.shape[1]
      out[name] = e[:, start:start + k].reshape(lead + e.shape[-1:])
      start += k
  return out


def model_embed_fn(graphdef, towers: Mapping[str, tuple[str, str]] = TOWERS, quantize: str = "int8",
                   pooling: str = "mean"):
  """embed_fn(params, batch_chunk) -> {tower: embeddings} for an NNX model split into (graphdef, pure-dict params),
  the form the trainer hands to `Task.loss_and_grad`."""
  return lambda params, batch: embed_towers(nnx.merge(graphdef, nnx.State(params)), batch, towers, quantize,
                                            pooling)


def tower_inputs(batch: Mapping[str, jax.Array], towers: Mapping[str, tuple[str, str]] = TOWERS) -> dict:
  """The batch entries the encoder reads (ids and masks of the towers present)."""
  keys = [k for pair in towers.values() for k in pair]
  return {k: batch[k] for k in keys if k in batch}


def loss_and_grad(graphdef, params, batch: Mapping[str, jax.Array],
                  objective: Callable[[dict, Mapping[str, jax.Array]], tuple[jax.Array, dict]], num_chunks: int,
                  towers: Mapping[str, tuple[str, str]] = TOWERS, quantize: str = "int8",
                  pooling: str = "mean") -> tuple[jax.Array, dict, Any]:
  """GradCache step for the trainer hook `Task.loss_and_grad(graphdef, params, batch, rng)`:
  (loss, metrics, grads) of objective(embeddings, batch), e.g. `contrastive.pair_objective(...)`, with the encoder
  run `num_chunks` chunks at a time. Non-tower batch entries (e.g. a hard-negative mask) reach the objective whole."""
  embed_fn = model_embed_fn(graphdef, towers, quantize, pooling)
  return grad_cached(embed_fn, lambda embs: objective(embs, batch), params, tower_inputs(batch, towers), num_chunks,
                     param_specs=partition_specs(graphdef, params))


def full_loss(model, batch: Mapping[str, jax.Array], objective, towers: Mapping[str, tuple[str, str]] = TOWERS,
              quantize: str = "int8", pooling: str = "mean") -> tuple[jax.Array, dict]:
  """The same objective without chunking, as a `Task.loss(model, batch, rng)` body (the trainer differentiates it)."""
  return objective(embed_towers(model, batch, towers, quantize, pooling), batch)
