"""GradCache on 8 fake CPU devices (mesh data=2 x fsdp=4): the strided chunk layout stays local to each device, the
chunked gradients equal the un-chunked full-batch gradients (pair loss with q-q negatives, margin mask and
Matryoshka; triplet loss with padded hard negatives; 1, 2, 4 and 16 chunks; float and int8 embeddings), the gradient
accumulator keeps the parameters' FSDP sharding, and the compiled program's temporaries grow with the embeddings, not
with the batch's activations."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
from flax import nnx

from pplx_jax.core import sharding
from pplx_jax.core.model_config import ModelConfig
from pplx_jax.models import encoder
from pplx_jax.objectives import contrastive, gradcache

RULES = sharding.DEFAULT_RULES
MESH = {"data": 2, "fsdp": 4}
CFG = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64,
                  compute_dtype="float32", remat="none")
K = 3
TAU = 0.05
OBJECTIVES = {
    "pair_mrl": contrastive.pair_objective(TAU, margin=0.1, use_qq=True, mrl_dims=[16, None], mrl_weights=[0.5, 1.0]),
    "triplet": contrastive.triplet_objective(TAU, margin=None),
}
# XLA:CPU's newer fusion emitters triple the compile time of these tiny programs (about 8 s -> 2.6 s each here);
# the legacy emitters compute the same float32 results.
FAST_COMPILE = {"xla_cpu_use_fusion_emitters": False}
COLLECTIVES = ("all-to-all", "all-gather", "collective-permute", "all-reduce", "reduce-scatter")


def require_8_devices():
  assert jax.device_count() == 8, (
      f"GradCache tests need 8 devices, found {jax.device_count()}: XLA_FLAGS="
      "--xla_force_host_platform_device_count=8 must be set before jax is imported (tests/conftest.py does this)")


def collectives(compiled_text: str) -> list[str]:
  return [c for c in COLLECTIVES if c in compiled_text]


# ---------------------------------------------------------------- chunk layout


def test_strided_chunks_stay_on_their_devices():
  """Chunk c = rows {c, c+C, ...}; every device holds rows of every chunk, all from its own input shard, and
  chunk/unchunk compile to no communication at all."""
  require_8_devices()
  mesh = sharding.make_mesh(MESH)
  x = np.arange(64 * 3, dtype=np.float32).reshape(64, 3)
  xs = jax.device_put(x, sharding.batch_sharding(mesh, RULES, 2))
  own_rows = {s.device: set(np.asarray(s.data)[:, 0].astype(int) // 3) for s in xs.addressable_shards}
  with sharding.activate(mesh, RULES):
    f = jax.jit(lambda a: gradcache.chunk(a, 4))
    y = f(xs)
    assert collectives(f.lower(xs).compile().as_text()) == []
    back = jax.jit(gradcache.unchunk)
    assert collectives(back.lower(y).compile().as_text()) == []
    np.testing.assert_array_equal(np.asarray(back(y)), x)
  np.testing.assert_array_equal(np.asarray(y)[:, :, 0] // 3, np.arange(64).reshape(16, 4).T)  # y[c, a] = row aC+c
  assert y.sharding.spec == jax.sharding.PartitionSpec(None, ("data", "fsdp"))
  for s in y.addressable_shards:
    rows = set(np.asarray(s.data)[:, :, 0].ravel().astype(int) // 3)
    assert len(rows) == 8 and rows <= own_rows[s.device]  # 2 rows of each of the 4 chunks, all local
    chunk_of = {r % 4 for r in rows}
    assert chunk_of == {0, 1, 2, 3}


def test_chunk_sizes_must_divide_the_batch_shards():
  require_8_devices()
  mesh = sharding.make_mesh(MESH)
  with sharding.activate(mesh, RULES):
    with pytest.raises(ValueError, match="batch shards"):
      jax.eval_shape(lambda a: gradcache.chunk(a, 8), jax.ShapeDtypeStruct((32, 4), np.float32))
  with pytest.raises(ValueError, match="not divisible by num_chunks"):
    gradcache.chunk(np.zeros((10, 2), np.float32), 4)


def test_embed_towers_groups_rows_by_query():
  """Towers of equal length share one encoder call, stacked per query; every embedding lands in its own tower and
  row (a lookup-table "encoder" makes each row's embedding a known function of its tokens)."""
  rng = np.random.RandomState(5)
  table = rng.randn(CFG.vocab_size, 4).astype(np.float32)
  calls = []

  def encoder(ids, mask):
    calls.append(ids.shape)
    return jax.numpy.asarray(table)[ids]

  batch = make_batch(8, rng, 6, 8)
  embs = jax.jit(lambda b: gradcache.embed_towers(encoder, b, quantize="none"))(batch)
  assert sorted(calls) == [(8, 6), (8 * (1 + K), 8)]  # queries alone; documents + hard negatives together
  for tower, lead in (("q", (8,)), ("d", (8,)), ("h", (8, K))):
    ids_key, mask_key = gradcache.TOWERS[tower]
    ids, mask = batch[ids_key], batch[mask_key].astype(np.float32)
    ref = (table[ids] * mask[..., None]).sum(-2) / mask.sum(-1, keepdims=True)
    assert embs[tower].shape == lead + (4,)
    np.testing.assert_allclose(np.asarray(embs[tower]), ref, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- gradients and memory
#
# Compiles dominate this file's runtime (the tiny model runs in milliseconds), so every program is compiled once
# (`compiled`) and shared: the pair cases run at the memory test's shapes and reuse its executables.

TRIPLET_N, TRIPLET_SQ, TRIPLET_SD = 32, 6, 8  # two encoder calls per chunk: queries; documents + hard negatives
PAIR_SEQ, MEM_CHUNK = 32, 32  # pair: N=64 (checked and measured) and N=512 (measured), 32 rows per chunk


def make_batch(n, rng, seq_q, seq_d, k=K, hard=True):
  def tower(shape):
    ids = rng.randint(0, CFG.vocab_size, shape).astype(np.int32)
    lengths = rng.randint(2, shape[-1] + 1, shape[:-1])
    mask = (np.arange(shape[-1]) < lengths[..., None]).astype(np.int32)
    return ids, mask

  batch = {}
  batch["q_ids"], batch["q_mask"] = tower((n, seq_q))
  batch["d_ids"], batch["d_mask"] = tower((n, seq_d))
  batch["d_ids"][3, :seq_q] = batch["q_ids"][3]  # a positive that repeats its query
  if hard:
    batch["n_ids"], batch["n_mask"] = tower((n, k, seq_d))
    batch["h_valid"] = rng.rand(n, k) > 0.25  # padding hard negatives (variable K)
    batch["h_valid"][:, 0] = True
  return batch


@functools.lru_cache(maxsize=None)
def setup():
  require_8_devices()
  mesh = sharding.make_mesh(MESH)
  with sharding.activate(mesh, RULES):
    model = encoder.create_model(CFG, seed=0)
  graphdef, state = nnx.split(model)
  return mesh, graphdef, nnx.to_pure_dict(state)


@functools.lru_cache(maxsize=None)
def batch_for(name, n):
  mesh, _, _ = setup()
  rng = np.random.RandomState(n)
  if name == "triplet":
    local = make_batch(n, rng, TRIPLET_SQ, TRIPLET_SD)
  else:
    local = make_batch(n, rng, PAIR_SEQ, PAIR_SEQ, hard=False)
  return sharding.host_local_to_global(local, mesh, RULES)


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


@functools.lru_cache(maxsize=None)
def compiled(name, n, num_chunks, quantize):
  """The compiled gradient step: GradCache with `num_chunks`, or the un-chunked reference when num_chunks is None."""
  mesh, graphdef, params = setup()
  objective = OBJECTIVES[name]
  if num_chunks is None:
    def loss(p, b):
      return gradcache.full_loss(nnx.merge(graphdef, nnx.State(p)), b, objective, quantize=quantize)

    def step(p, b):
      (value, metrics), grads = jax.value_and_grad(loss, has_aux=True)(p, b)
      return value, metrics, grads
  else:
    def step(p, b):
      return gradcache.loss_and_grad(graphdef, p, b, objective, num_chunks, quantize=quantize)
  with sharding.activate(mesh, RULES):
    return jax.jit(step).lower(_abstract(params), _abstract(batch_for(name, n))).compile(FAST_COMPILE)


@functools.lru_cache(maxsize=None)
def run(name, n, num_chunks, quantize):
  _, _, params = setup()
  return jax.device_get(compiled(name, n, num_chunks, quantize)(params, batch_for(name, n)))


def flat(tree):
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


# The exact check runs on float embeddings (quantize="none"): GradCache must reproduce the full-batch gradient to
# float32 rounding (measured: < 1e-6 of each tensor's scale). With int8 QAT the forward is a step function: the
# chunked and the full-batch encoder differ by float32 rounding (~5e-7), which now and then moves one embedding across
# a rounding boundary, and a single flipped code shifts the gradients by ~6e-4 of their scale (measured: one flip in
# 16,384 codes at N=512). The int8 case therefore allows 2e-3 of the scale — still far below what a wrong chunk
# layout or a missing chunk gives (O(1)).
CASES = [(name, TRIPLET_N if name == "triplet" else 2 * MEM_CHUNK, c, "none") for name in OBJECTIVES for c in (1, 2, 4)]
CASES += [("pair_mrl", 512, 512 // MEM_CHUNK, "none"),  # the memory test's programs: 16 chunks
          ("pair_mrl", 2 * MEM_CHUNK, 2, "int8")]  # the QAT path (embedding is per tower: one loss suffices)


@pytest.mark.parametrize("name,n,num_chunks,quantize", CASES)
def test_gradcache_equals_full_batch_gradients(name, n, num_chunks, quantize):
  exe = compiled(name, n, num_chunks, quantize)
  text = exe.as_text()
  # chunking never moves rows between devices (the embedding lookup's all-to-all trades table columns for rows)
  moves = [line for line in text.splitlines() if " all-to-all(" in line or " collective-permute(" in line]
  assert moves and all("embed_lookup" in line for line in moves), [m[:300] for m in moves if "embed_lookup" not in m]
  _, _, params = setup()
  params = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  for path, sh in jax.tree_util.tree_flatten_with_path(exe.output_shardings[2])[0]:
    # the float32 gradient accumulator is FSDP-sharded like the parameters, never a replicated copy of the model
    assert sh.is_equivalent_to(params[path].sharding, params[path].ndim), (path, sh, params[path].sharding)
  ref_loss, ref_metrics, ref_grads = run(name, n, None, quantize)
  loss, metrics, grads = run(name, n, num_chunks, quantize)
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
  for k in ref_metrics:
    np.testing.assert_allclose(float(metrics[k]), float(ref_metrics[k]), rtol=1e-5, atol=1e-6)
  g, r = flat(grads), flat(ref_grads)
  assert g.keys() == r.keys() and len(r) == 13
  tol = 1e-4 if quantize == "none" else 2e-3
  for path in r:
    assert g[path].dtype == np.float32 and g[path].shape == r[path].shape
    scale = np.abs(r[path]).max()
    assert scale > 0, f"{path}: zero reference gradient makes the comparison vacuous"
    np.testing.assert_allclose(g[path], r[path], rtol=1e-4, atol=tol * scale, err_msg=path)


def test_gradcache_temporaries_grow_with_embeddings_not_activations():
  """Per-device temporaries of one pair-loss gradient step at N=64 and N=512 (8 devices, sequences of 32): GradCache
  with a fixed chunk of 32 rows holds one chunk's activations, the un-chunked step holds the whole batch's."""
  m = {(kind, n): compiled("pair_mrl", n, None if kind == "full" else n // MEM_CHUNK, "none").memory_analysis()
       .temp_size_in_bytes for kind in ("full", "gradcache") for n in (64, 512)}
  print("\nper-device temp bytes: " + ", ".join(f"{k[0]} N={k[1]}: {v:,}" for k, v in m.items()))
  full_growth = m["full", 512] - m["full", 64]
  gc_growth = m["gradcache", 512] - m["gradcache", 64]
  assert full_growth > 0
  assert gc_growth < 0.2 * full_growth, m
  assert m["gradcache", 512] < 0.3 * m["full", 512], m
