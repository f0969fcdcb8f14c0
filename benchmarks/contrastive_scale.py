#!/usr/bin/env python
"""Contrastive scale: how far the global batch (in-batch negatives) goes with and without GradCache.

    python benchmarks/contrastive_scale.py [--json out.json]     # Qwen3-0.6B memory sweep + timings, ~7 min, 2 cores
    python benchmarks/contrastive_scale.py --quick               # smoke run, < 2 min (tiny model)
    python benchmarks/contrastive_scale.py --devices 64 --ns 1024,16384,65536 --full-max-n 0 --skip-time

Part 1, memory (compile only, nothing is allocated): the pair-stage train step (pair InfoNCE with query-query
negatives and the 0.1 margin mask, temperature 0.02, int8 QAT embeddings, mean pooling: the `ContrastiveTask`
defaults) is lowered with abstract, sharded parameters and batch (`jax.ShapeDtypeStruct`) on a mesh of P fake CPU
devices (fsdp=P: the batch and the weights are split P ways) and compiled; `compiled.memory_analysis()` gives the
per-device argument, output and temporary bytes. Two programs per global batch N:
  * gradcache: `gradcache.loss_and_grad(..., num_chunks=N / chunk_rows)` (a fixed chunk of `--chunk-rows` rows);
  * full: `jax.value_and_grad` of `gradcache.full_loss` (the whole batch's activations at once).
By default the step is the trainer's `train_step`: loss + grads + the stage's optax chain (`make_optimizer(
default_config())`: clipping, AdamW, WSD) with params and optimizer state donated, the AdamW moments sharded like
their parameters (`--no-optimizer`: loss + grads only). "peak" = arguments + outputs - aliased (donated) +
temporaries, per device. The objective alone (value and gradient w.r.t. abstract [N, D] embeddings) is compiled
too, to say how much of the growth is the similarity blocks; one float32 [N, N] block row-sharded over P devices is
N/P x N x 4 B. Then the largest N whose peak fits `--budget-gib` per device, with and without GradCache: the sweep's
powers of two (extended by doubling / halving until the budget is crossed), then `--bisect` compiles between the
last fitting and the first failing size (on multiples of chunk_rows, or of P without GradCache). The layers are
scanned, so one compile takes ~5-15 s on 2 cores even for 0.6B at N = 65,536.

The first version of this benchmark found two bugs now fixed in the library: `contrastive.diagonal`'s identity
mask was left to sharding propagation and came out UNSHARDED (a float32 [N, N] on every device: 16 GiB at 65,536),
and the trainer initialised AdamW's moments replicated (`optimizer.init_sharded` now shards them like the params).

Part 2, time (runs): the GradCache loss + grads (no optimizer) of a very small Qwen3 (`--time-*` flags) for
`--time-ns` on `--time-devices` devices (default 1), median of `--steps` timed steps after `--warmup`: wall and
process-CPU ms/step, ms per 1k rows, ratio to N=1024 (linear = N/1024). Two more programs per N split the step: the
objective alone (value and gradient on random [N, D] embeddings: the O(N^2) similarity blocks) and the same GradCache
step with an O(N) stand-in loss (the encoder and the GradCache machinery without the blocks).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

GiB = 1024 ** 3
MiB = 1024 ** 2

# Memory-sweep encoders. The layers are scanned, so even 0.6B compiles in ~10 s on 2 CPU cores at any N.
MODELS = {
    "qwen3-0.6b": "configs.model.qwen3_0_6b",  # 28 layers, hidden 1024, vocab 151936, tied
    "small": dict(vocab_size=151_936, hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=64,
                  mlp_dim=768),
    "tiny": "configs.model.tiny",  # 2 layers, hidden 64, vocab 4096
}
BUDGET_DEFAULT = {"qwen3-0.6b": 16.0, "small": 4.0, "tiny": 1.0}


def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--quick", action="store_true",
                  help="smoke run (< 2 min): tiny model, memory at N = 1024 and 8192, time at N = 1024 and 4096")
  ap.add_argument("--json", default="", help="write the results here")
  ap.add_argument("--skip-memory", action="store_true")
  ap.add_argument("--skip-time", action="store_true")
  ap.add_argument("--devices", type=int, default=8, help="fake CPU devices (XLA_FLAGS, set before jax starts)")
  # memory part
  ap.add_argument("--model", choices=tuple(MODELS), default="qwen3-0.6b")
  ap.add_argument("--layers", type=int, default=None, help="override the model's num_layers")
  ap.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="compute dtype")
  ap.add_argument("--remat", default="full", help="ModelConfig.remat")
  ap.add_argument("--q-len", type=int, default=32)
  ap.add_argument("--d-len", type=int, default=128)
  ap.add_argument("--chunk-rows", type=int, default=512, help="GradCache rows per chunk (global, over all devices)")
  ap.add_argument("--ns", default="1024,2048,4096,8192,16384,32768,65536", help="global batches of the sweep")
  ap.add_argument("--full-max-n", type=int, default=65536,
                  help="largest N of the sweep compiled without GradCache (0: no un-chunked programs at all)")
  ap.add_argument("--budget-gib", type=float, default=None, help="peak per device (default: by model)")
  ap.add_argument("--max-n", type=int, default=1 << 20, help="stop the budget search here")
  ap.add_argument("--bisect", type=int, default=3, help="bisection compiles per mode after the power-of-two search")
  ap.add_argument("--no-qq", action="store_true", help="drop the query-query negatives (one [N, N] block, not two)")
  ap.add_argument("--quantize", choices=("int8", "none"), default="int8")
  ap.add_argument("--no-optimizer", action="store_true", help="loss + grads only (no optax update)")
  ap.add_argument("--xla-opt0", choices=("true", "false"), default="true",
                  help="compile the memory programs with LLVM -O0 (faster compiles; buffer assignment is unchanged)")
  # time part
  ap.add_argument("--time-devices", type=int, default=1, help="devices for the timed runs (1 or --devices)")
  ap.add_argument("--time-ns", default="1024,2048,4096,8192,16384")
  ap.add_argument("--time-chunk-rows", type=int, default=512)
  ap.add_argument("--time-hidden", type=int, default=32)
  ap.add_argument("--time-layers", type=int, default=1)
  ap.add_argument("--time-vocab", type=int, default=512)
  ap.add_argument("--time-seq", type=int, default=16, help="query and document length of the timed runs")
  ap.add_argument("--time-dtype", choices=("float32", "bfloat16"), default="float32")
  ap.add_argument("--steps", type=int, default=3)
  ap.add_argument("--warmup", type=int, default=1)
  args = ap.parse_args(argv)
  if args.quick:
    args.model = "tiny"
    args.ns = "1024,8192"
    args.full_max_n = 8192
    args.max_n = 8192
    args.bisect = 0
    args.time_ns = "1024,4096"
    args.steps = 2
  if args.budget_gib is None:
    args.budget_gib = BUDGET_DEFAULT[args.model]
  return args


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + f" --xla_force_host_platform_device_count={ARGS.devices}").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from machine import describe_machine, load_average  # noqa: E402  (benchmarks/machine.py)

from pplx_jax.core import sharding  # noqa: E402
from pplx_jax.core.model_config import ModelConfig  # noqa: E402
from pplx_jax.models import encoder  # noqa: E402
from pplx_jax.objectives import contrastive, gradcache  # noqa: E402
from pplx_jax.stages import optimizer as optimizer_lib  # noqa: E402

RULES = sharding.DEFAULT_RULES
TOWERS = {k: gradcache.TOWERS[k] for k in ("q", "d")}  # the pair stage: no hard-negative tower
TEMPERATURE, MARGIN = 0.02, 0.1  # contrastive.default_objective_config()


# ----------------------------------------------------------------------------------------------------------------
# Helpers


def model_config(name: str, dtype: str, remat: str, layers: int | None) -> ModelConfig:
  import importlib
  spec = MODELS[name]
  if isinstance(spec, str):
    d = importlib.import_module(spec).get_config().to_dict()
  else:
    from configs.model._qwen3 import qwen3 as base
    d = base(**spec).to_dict()
  d.update(compute_dtype=dtype, remat=remat)
  if layers:
    d["num_layers"] = layers
  return ModelConfig.from_dict(d)


def abstract_params(cfg: ModelConfig, mesh):
  """(graphdef, pure dict of sharded ShapeDtypeStructs): no parameter is ever allocated."""
  graphdef, state = nnx.split(encoder.abstract_model(cfg))
  shards = nnx.to_pure_dict(sharding.param_shardings(state, mesh, RULES))
  shapes = nnx.to_pure_dict(state)
  return graphdef, jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shards)


def abstract_batch(n: int, q_len: int, d_len: int, mesh) -> dict:
  sh = sharding.batch_sharding(mesh, RULES, 2)
  out = {}
  for t, s in (("q", q_len), ("d", d_len)):
    out[f"{t}_ids"] = jax.ShapeDtypeStruct((n, s), jnp.int32, sharding=sh)
    out[f"{t}_mask"] = jax.ShapeDtypeStruct((n, s), jnp.int32, sharding=sh)
  return out


def make_step(graphdef, objective, num_chunks, quantize, tx):
  """The trainer's train_step (GradCache when num_chunks, else value_and_grad of the un-chunked loss); without tx
  the step returns (loss, metrics, grads)."""

  def grads_of(params, batch):
    if num_chunks:
      return gradcache.loss_and_grad(graphdef, params, batch, objective, num_chunks, TOWERS, quantize)

    def loss_fn(p):
      return gradcache.full_loss(nnx.merge(graphdef, nnx.State(p)), batch, objective, TOWERS, quantize)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return loss, metrics, grads

  if tx is None:
    return grads_of

  def train_step(params, opt_state, batch):
    loss, metrics, grads = grads_of(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, dict(metrics, loss=loss, grad_norm=optimizer_lib.global_norm(grads))

  return train_step


def mem_dict(ma) -> dict:
  d = dict(argument=ma.argument_size_in_bytes, output=ma.output_size_in_bytes, alias=ma.alias_size_in_bytes,
           temp=ma.temp_size_in_bytes)
  d["peak"] = d["argument"] + d["output"] - d["alias"] + d["temp"]
  return d


# ----------------------------------------------------------------------------------------------------------------
# Part 1: memory


class MemoryProbe:

  def __init__(self, args, mesh):
    self.args, self.mesh = args, mesh
    self.cfg = model_config(args.model, args.dtype, args.remat, args.layers)
    self.num_devices = mesh.size
    self.objective = contrastive.pair_objective(TEMPERATURE, margin=MARGIN, use_qq=not args.no_qq)
    self.opts = {"xla_backend_optimization_level": 0} if args.xla_opt0 == "true" else {}
    with sharding.activate(mesh, RULES):
      self.graphdef, self.params = abstract_params(self.cfg, mesh)
      if args.no_optimizer:
        self.tx, self.opt_state = None, None
      else:
        self.tx, _ = optimizer_lib.make_optimizer(optimizer_lib.default_config(), 100_000)
        # AdamW's mu / nu sharded like their parameters (FSDP), as the trainer does
        self.opt_state = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                                      jax.eval_shape(self.tx.init, self.params),
                                      optimizer_lib.state_shardings(self.tx, self.params))
    self.cache: dict = {}

  def measure(self, n: int, gc: bool) -> dict:
    key = (n, gc)
    if key in self.cache:
      return self.cache[key]
    a = self.args
    num_chunks = n // a.chunk_rows if gc else 0
    step = make_step(self.graphdef, self.objective, num_chunks, a.quantize, self.tx)
    batch = abstract_batch(n, a.q_len, a.d_len, self.mesh)
    t0 = time.perf_counter()
    with sharding.activate(self.mesh, RULES):
      if self.tx is None:
        lowered = jax.jit(step).lower(self.params, batch)
      else:
        lowered = jax.jit(step, donate_argnums=(0, 1)).lower(self.params, self.opt_state, batch)
      t1 = time.perf_counter()
      compiled = lowered.compile(self.opts)
    out = mem_dict(compiled.memory_analysis())
    out.update(n=n, mode="gradcache" if gc else "full", num_chunks=num_chunks, lower_s=t1 - t0,
               compile_s=time.perf_counter() - t1)
    self.cache[key] = out
    print(f"[memory] N={n:>7} {out['mode']:>9}: temp {out['temp'] / MiB:9.1f} MiB, peak {out['peak'] / MiB:9.1f} MiB"
          f" per device (lower {out['lower_s']:.1f}s, compile {out['compile_s']:.1f}s; load {load_average()})",
          flush=True)
    return out

  def loss_only(self, n: int) -> dict:
    """The objective alone on abstract [N, D] float32 embeddings (value and gradient w.r.t. both)."""
    dim = self.cfg.hidden_size
    sh = sharding.batch_sharding(self.mesh, RULES, 2)
    embs = {t: jax.ShapeDtypeStruct((n, dim), jnp.float32, sharding=sh) for t in ("q", "d")}

    def f(e):
      (loss, _), g = jax.value_and_grad(self.objective, has_aux=True)(e)
      return loss, g

    with sharding.activate(self.mesh, RULES):
      out = mem_dict(jax.jit(f).lower(embs).compile(self.opts).memory_analysis())
    out["n"] = n
    return out

  def fits(self, n: int, gc: bool) -> bool:
    return self.measure(n, gc)["peak"] <= self.args.budget_gib * GiB

  def largest(self, gc: bool, known: list[int]) -> dict:
    """Largest N with peak <= budget: powers of two from the sweep, then bisection on the multiple grid."""
    a = self.args
    grid = a.chunk_rows if gc else self.num_devices
    known = sorted(known)
    fit = [n for n in known if self.fits(n, gc)]
    lo = max(fit) if fit else None
    hi = min((n for n in known if lo is None or n > lo), default=None)
    if lo is None:  # nothing of the sweep fits: halve
      n = known[0] // 2
      while n >= grid and n % grid == 0:
        if self.fits(n, gc):
          lo = n
          break
        hi, n = n, n // 2
    elif hi is None:  # everything fits: double
      n = lo * 2
      while n <= a.max_n:
        if not self.fits(n, gc):
          hi = n
          break
        lo, n = n, n * 2
    for _ in range(a.bisect if lo is not None and hi is not None else 0):
      mid = (lo + hi) // 2 // grid * grid
      if mid <= lo or mid >= hi:
        break
      if self.fits(mid, gc):
        lo = mid
      else:
        hi = mid
    return dict(mode="gradcache" if gc else "full", largest_n=lo, first_over=hi, grid=grid,
                peak=self.measure(lo, gc)["peak"] if lo else None, budget_gib=a.budget_gib)


def run_memory(args, mesh) -> dict:
  t0 = time.perf_counter()
  probe = MemoryProbe(args, mesh)
  cfg, p = probe.cfg, probe.num_devices
  ns = [int(x) for x in args.ns.split(",")]
  n_params = cfg.num_params()
  print(f"[memory] model {args.model}: {n_params / 1e6:.1f}M params, {cfg.num_layers} layers, hidden "
        f"{cfg.hidden_size}, vocab {cfg.vocab_size}, {cfg.compute_dtype} compute, remat {cfg.remat}; q {args.q_len} / "
        f"d {args.d_len} tokens; {p} devices; chunk {args.chunk_rows} rows; "
        f"{'loss + grads' if args.no_optimizer else 'loss + grads + optax update (donated)'}", flush=True)
  rows = []
  for n in ns:
    row = dict(n=n, gradcache=probe.measure(n, True))
    if n <= args.full_max_n:
      row["full"] = probe.measure(n, False)
    row["loss_only"] = probe.loss_only(n)
    row["block_bytes"] = n // p * n * 4  # one float32 [N, N] block, row-sharded over p devices
    rows.append(row)
  sweep_s = time.perf_counter() - t0
  largest = [probe.largest(True, ns)]
  if any(n <= args.full_max_n for n in ns):
    largest.append(probe.largest(False, [n for n in ns if n <= args.full_max_n]))
  extra = sorted((k for k in probe.cache if k[0] not in ns), key=lambda k: (k[1], k[0]))
  return dict(model=args.model, model_config=cfg.to_dict(), num_params=n_params, devices=p,
              mesh=dict(mesh.shape), q_len=args.q_len, d_len=args.d_len, chunk_rows=args.chunk_rows,
              use_qq=not args.no_qq, quantize=args.quantize, optimizer=not args.no_optimizer,
              budget_gib=args.budget_gib, rows=rows, largest=largest, search=[probe.cache[k] for k in extra],
              sweep_s=sweep_s, total_s=time.perf_counter() - t0, load_average=load_average())


def memory_tables(res: dict) -> str:
  mb = lambda b: f"{b / MiB:,.1f}"
  base = res["rows"][0]
  lines = [f"Per-device bytes from `memory_analysis()` (MiB), {res['devices']} devices, model {res['model']} "
           f"({res['num_params'] / 1e6:.0f}M params), chunk {res['chunk_rows']} rows, "
           f"{'loss + grads + optax update' if res['optimizer'] else 'loss + grads'}; "
           f"temp growth is relative to N={base['n']:,}:\n",
           "| N | chunks | GC args | GC temp | GC temp growth | GC peak | full args | full temp | full peak |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in res["rows"]:
    g, f = r["gradcache"], r.get("full")
    growth = g["temp"] / base["gradcache"]["temp"] - 1
    lines.append(f"| {r['n']:,} | {g['num_chunks']} | {mb(g['argument'])} | {mb(g['temp'])} | {100 * growth:+.1f}% | "
                 f"{mb(g['peak'])} | {mb(f['argument']) if f else '-'} | {mb(f['temp']) if f else '-'} | "
                 f"{mb(f['peak']) if f else '-'} |")
  lines.append("")
  last = res["rows"][-1]
  g0, g1 = base["gradcache"]["temp"], last["gradcache"]["temp"]
  lines.append(f"GradCache temporaries from N={base['n']:,} to N={last['n']:,}: {g0 / MiB:,.1f} -> {g1 / MiB:,.1f} MiB "
               f"per device, {100 * (g1 / g0 - 1):+.1f}% (target: at most +10%).\n")
  lines.append("What grows: the objective alone (loss and gradient w.r.t. abstract [N, D] embeddings: the [N, N] "
               "similarity blocks, the gathered embeddings and their gradients), compiled on its own, against the "
               "rest of the GradCache temporaries (MiB per device):\n")
  lines.append("| N | GC temp | loss-only temp | GC temp - loss-only temp | one block / device | loss-only temp / "
               "block | GC temp - first N's GC temp, in blocks |")
  lines.append("|---:|---:|---:|---:|---:|---:|---:|")
  for r in res["rows"]:
    g, lo, blk = r["gradcache"]["temp"], r["loss_only"]["temp"], r["block_bytes"]
    lines.append(f"| {r['n']:,} | {mb(g)} | {mb(lo)} | {mb(g - lo)} | {mb(blk)} | {lo / blk:.2f} | "
                 f"{(g - g0) / blk:.2f} |")
  lines.append("")
  lines.append(f"Largest global batch with peak (arguments + outputs - donated + temporaries) <= "
               f"{res['budget_gib']:g} GiB per device:\n")
  lines.append("| mode | largest N that fits | peak there (MiB) | smallest N tried that does not fit |")
  lines.append("|---|---:|---:|---:|")
  for L in res["largest"]:
    lines.append(f"| {L['mode']} | {L['largest_n']:,} | {mb(L['peak'])} | "
                 f"{'-' if L['first_over'] is None else format(L['first_over'], ',')} |"
                 if L["largest_n"] else f"| {L['mode']} | none | - | {L['first_over']} |")
  return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Part 2: time


def _timed(calls: dict, warmup: int, steps: int) -> dict[str, tuple[list[float], list[float]]]:
  """{name: (wall seconds, process CPU seconds)} of each timed call; the calls run round-robin (a, b, c, a, b, c,
  ...) so that all of them see the same machine load. CPU time counts all threads of this process and is much less
  sensitive than wall time to the other jobs of a shared machine."""
  out = {k: ([], []) for k in calls}
  for i in range(warmup + steps):
    for name, (fn, fn_args) in calls.items():
      t1, c1 = time.perf_counter(), time.process_time()
      jax.block_until_ready(fn(*fn_args))
      if i >= warmup:
        out[name][0].append(time.perf_counter() - t1)
        out[name][1].append(time.process_time() - c1)
  return out


def run_time(args) -> dict:
  """At each N: the GradCache loss + grads (the step), the objective alone on [N, D] embeddings (value and gradient
  w.r.t. them: the O(N^2) similarity part) and the GradCache step with an O(N) stand-in loss (the encoder part)."""
  t0 = time.perf_counter()
  devs = jax.devices()[:args.time_devices]
  mesh = sharding.make_mesh({"fsdp": len(devs)}, devices=devs)
  cfg = ModelConfig(vocab_size=args.time_vocab, hidden_size=args.time_hidden, num_layers=args.time_layers,
                    num_heads=4, num_kv_heads=2, head_dim=max(8, args.time_hidden // 4), mlp_dim=2 * args.time_hidden,
                    compute_dtype=args.time_dtype, remat="none", max_position_embeddings=max(64, args.time_seq))
  objective = contrastive.pair_objective(TEMPERATURE, margin=MARGIN, use_qq=not args.no_qq)
  with sharding.activate(mesh, RULES):
    model = encoder.create_model(cfg, seed=0)
  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(state)
  rng = np.random.RandomState(0)
  rows = []
  print(f"[time] {cfg.num_params() / 1e3:.0f}K params (hidden {cfg.hidden_size}, {cfg.num_layers} layer(s), vocab "
        f"{cfg.vocab_size}), seq {args.time_seq}, chunk {args.time_chunk_rows} rows, {len(devs)} device(s)",
        flush=True)

  def loss_only(embs):
    (loss, _), g = jax.value_and_grad(objective, has_aux=True)(embs)
    return loss, g

  def linear_objective(embs, batch=None):  # O(N) stand-in: the GradCache step without the [N, N] blocks
    return jnp.mean(jnp.sum(embs["q"] * embs["d"], axis=-1)), {}

  for n in [int(x) for x in args.time_ns.split(",")]:
    local = {}
    for t in ("q", "d"):
      local[f"{t}_ids"] = rng.randint(0, cfg.vocab_size, (n, args.time_seq)).astype(np.int32)
      lengths = rng.randint(2, args.time_seq + 1, (n,))
      local[f"{t}_mask"] = (np.arange(args.time_seq) < lengths[:, None]).astype(np.int32)
    batch = sharding.host_local_to_global(local, mesh, RULES)
    embs = sharding.host_local_to_global(
        {t: rng.randn(n, cfg.hidden_size).astype(np.float32) for t in ("q", "d")}, mesh, RULES)
    num_chunks = max(1, n // args.time_chunk_rows)
    step = make_step(graphdef, objective, num_chunks, args.quantize, None)
    enc_step = make_step(graphdef, linear_objective, num_chunks, args.quantize, None)
    with sharding.activate(mesh, RULES):
      tc = time.perf_counter()
      fn = jax.jit(step).lower(params, batch).compile()
      compile_s = time.perf_counter() - tc
      lfn = jax.jit(loss_only).lower(embs).compile()
      efn = jax.jit(enc_step).lower(params, batch).compile()
      tm = _timed({"step": (fn, (params, batch)), "loss": (lfn, (embs,)), "encoder": (efn, (params, batch))},
                  args.warmup, args.steps)
      (times, cpu), (ltimes, lcpu), (etimes, ecpu) = tm["step"], tm["loss"], tm["encoder"]
      loss = float(fn(params, batch)[0])
    assert math.isfinite(loss)
    med, lmed = statistics.median(times), statistics.median(ltimes)
    cmed, lcmed, ecmed = statistics.median(cpu), statistics.median(lcpu), statistics.median(ecpu)
    rows.append(dict(n=n, num_chunks=num_chunks, median_s=med, min_s=min(times), times_s=times, cpu_median_s=cmed,
                     cpu_s=cpu, loss_median_s=lmed, loss_times_s=ltimes, loss_cpu_median_s=lcmed, loss_cpu_s=lcpu,
                     encoder_median_s=statistics.median(etimes), encoder_times_s=etimes, encoder_cpu_median_s=ecmed,
                     encoder_cpu_s=ecpu, compile_s=compile_s,
                     temp=fn.memory_analysis().temp_size_in_bytes, load_average=load_average()))
    print(f"[time] N={n:>6}: {1e3 * med:8.1f} ms/step (min {1e3 * min(times):.1f}, CPU {1e3 * cmed:.1f}), loss alone "
          f"{1e3 * lmed:.1f} ms (CPU {1e3 * lcmed:.1f}), encoder only {1e3 * statistics.median(etimes):.1f} ms "
          f"(CPU {1e3 * ecmed:.1f}) "
          f"(compile {compile_s:.1f}s; load {load_average()})", flush=True)
    del batch, embs, fn, lfn, efn
  # model FLOPs: the encoder runs 4 forward-equivalents per row (forward, GradCache re-encode, 2x backward); each
  # [N, N] block costs 3 matmuls of 2 N^2 D (forward, two backward)
  flops_tok = 2 * cfg.num_params(include_embeddings=False)
  for r in rows:
    n = r["n"]
    r.update(encoder_flops=4 * flops_tok * 2 * n * args.time_seq,
             block_flops=(1 if args.no_qq else 2) * 3 * 2 * n * n * cfg.hidden_size)
  return dict(model_config=cfg.to_dict(), num_params=cfg.num_params(), devices=len(devs), seq=args.time_seq,
              chunk_rows=args.time_chunk_rows, steps=args.steps, warmup=args.warmup, rows=rows,
              total_s=time.perf_counter() - t0, load_average=load_average())


def time_table(res: dict) -> str:
  b = res["rows"][0]
  mc = res["model_config"]
  lines = [f"GradCache loss + grads, {res['num_params'] / 1e3:.0f}K-param Qwen3 (hidden {mc['hidden_size']}, "
           f"{mc['num_layers']} layer(s), vocab {mc['vocab_size']}, {mc['compute_dtype']}), q/d length {res['seq']}, "
           f"chunk {res['chunk_rows']} rows, {res['devices']} device(s), median of {res['steps']} steps after "
           f"{res['warmup']} warmup. Wall = wall clock; CPU = process CPU time (all threads; less sensitive to other "
           f"jobs). \"loss alone\" = the pair objective's value and gradient on [N, D] embeddings; \"encoder only\" "
           f"= the same GradCache step with an O(N) stand-in loss (mean of q_i . d_i), i.e. without the [N, N] blocks; "
           f"rest = step - loss alone - encoder only:\n",
           "| N | chunks | wall ms/step | wall ms per 1k rows | wall ratio to N=1,024 | CPU ms/step | CPU ratio "
           "| linear | loss alone CPU ms | encoder only CPU ms | encoder only CPU ms per 1k rows | encoder only ratio "
           "| rest CPU ms | block / encoder FLOPs |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in res["rows"]:
    k = r["n"] / 1000
    rest = r["cpu_median_s"] - r["loss_cpu_median_s"] - r["encoder_cpu_median_s"]
    lines.append(f"| {r['n']:,} | {r['num_chunks']} | {1e3 * r['median_s']:,.0f} | {1e3 * r['median_s'] / k:.0f} | "
                 f"{r['median_s'] / b['median_s']:.2f} | {1e3 * r['cpu_median_s']:,.0f} | "
                 f"{r['cpu_median_s'] / b['cpu_median_s']:.2f} | {r['n'] / b['n']:.0f} | "
                 f"{1e3 * r['loss_cpu_median_s']:,.0f} | {1e3 * r['encoder_cpu_median_s']:,.0f} | "
                 f"{1e3 * r['encoder_cpu_median_s'] / k:.0f} | "
                 f"{r['encoder_cpu_median_s'] / b['encoder_cpu_median_s']:.2f} | {1e3 * rest:,.0f} | "
                 f"{r['block_flops'] / r['encoder_flops']:.2f} |")
  return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------


def main(args):
  t0 = time.perf_counter()
  print(f"machine: {describe_machine()}; jax {jax.__version__}; {jax.device_count()} devices; "
        f"load average {load_average()}", flush=True)
  out = dict(machine=describe_machine(), jax=jax.__version__, xla_flags=os.environ.get("XLA_FLAGS", ""),
             load_average_start=load_average(), args=vars(args))
  tables = []
  if not args.skip_memory:
    mesh = sharding.make_mesh({"fsdp": args.devices}, devices=jax.devices()[:args.devices])
    out["memory"] = run_memory(args, mesh)
    tables.append(memory_tables(out["memory"]))
  if not args.skip_time:
    out["time"] = run_time(args)
    tables.append(time_table(out["time"]))
  out["tables"] = "\n\n".join(tables)
  out["total_s"] = time.perf_counter() - t0
  out["load_average_end"] = load_average()
  print()
  print(out["tables"])
  print()
  print(f"total {out['total_s']:.0f}s; load average at the end: {out['load_average_end']}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(out, f, indent=1, default=str)
    print(f"wrote {args.json}")


if __name__ == "__main__":
  main(ARGS)
