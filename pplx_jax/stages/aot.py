"""Compile a stage's real train step for a TPU topology on any machine (libtpu from PyPI), and say whether it fits.

    pplx-jax aot --config configs/pretrain/qwen3_0_6b.py:v5p-128 --topology v5p-128 [--config.model.remat=dots]

The step is the trainer's own (`trainer.make_train_step` + `trainer.jit_train_step`, the task's loss, the stage's
optimizer, the config's mesh, sharding rules and remat policy), lowered with abstract sharded arguments
(`jax.ShapeDtypeStruct`) on the abstract devices of `jax.experimental.topologies.get_topology_desc` and compiled by
libtpu's XLA:TPU compiler. Nothing is allocated and no TPU is needed.

What it reports, per chip: HBM from `memory_analysis()` (arguments, outputs, donated aliases, temporaries, code),
against the chip's capacity; FLOPs from `cost_analysis()` next to the analytic model FLOPs of
`pplx_jax/stages/flops.py` (XLA counts a scanned loop body once, so its number is a per-iteration figure, not the
step's); XLA's own time estimate (same caveat: a lower bound for scanned programs) and the step time at 100% MFU.
When the program does not fit, XLA:TPU refuses to compile it ("Ran out of memory in memory space hbm"); the numbers
in that message become the verdict. The CLI exits 3 when the step does not fit, so it can gate a pod booking.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time

from pplx_jax.core.errors import UserError

GiB = 1024 ** 3

# Pod names as Cloud TPU sells them -> topology names get_topology_desc accepts. v4/v5p names count TensorCores
# (two per chip), v5e/v6e names count chips: v5p-128 is 64 chips, v6e-64 is 64 chips.
POD_TOPOLOGIES = {
    "v4-8": "v4:2x2x1", "v4-32": "v4:2x2x4", "v4-128": "v4:4x4x4",
    "v5p-8": "v5p:2x2x1", "v5p-16": "v5p:2x2x2", "v5p-32": "v5p:2x2x4", "v5p-64": "v5p:2x4x4",
    "v5p-128": "v5p:4x4x4", "v5p-256": "v5p:4x4x8", "v5p-512": "v5p:4x8x8", "v5p-1024": "v5p:8x8x8",
    "v5e-4": "v5e:2x2", "v5e-16": "v5e:4x4", "v5e-64": "v5e:8x8", "v5e-256": "v5e:16x16",
    "v6e-4": "v6e:2x2", "v6e-16": "v6e:4x4", "v6e-64": "v6e:8x8", "v6e-256": "v6e:16x16",
}

# HBM per chip (GiB) and dense bf16 peak per chip, by generation (Cloud TPU spec sheets).
CHIPS = {"v4": (32.0, 275e12), "v5p": (95.0, 459e12), "v5e": (16.0, 197e12), "v6e": (32.0, 918e12)}


class AotError(UserError):
  """A topology or config that cannot be compiled (not an out-of-memory verdict)."""


@dataclasses.dataclass
class Report:
  config: str
  stage: str
  topology: str
  chips: int
  mesh: dict
  remat: str
  attention_impl: str
  global_batch: int
  capacity_gib: float
  budget_gib: float
  fits: bool
  total_gib: float
  argument_gib: float | None = None
  output_gib: float | None = None
  alias_gib: float | None = None
  temp_gib: float | None = None
  code_gib: float | None = None
  compiled_flops_per_chip: float | None = None
  model_flops_per_chip: float | None = None
  xla_seconds: float | None = None
  ideal_seconds: float | None = None
  tokens_per_step: int | None = None
  compile_s: float | None = None
  message: str = ""

  @property
  def headroom(self) -> float:
    return 1.0 - self.total_gib / self.budget_gib

  def verdict(self) -> str:
    if self.fits:
      return (f"fits with {100 * self.headroom:.0f}% headroom: {self.total_gib:.1f} GiB of "
              f"{self.budget_gib:.0f} GiB per chip")
    return f"DOES NOT FIT: needs {self.total_gib:.1f} GiB > {self.budget_gib:.0f} GiB per chip"


# ---- topology ----


def resolve_topology(name: str) -> tuple[str, str]:
  """'v5p-128' or 'v5p:4x4x4' -> ('v5p:4x4x4', 'v5p')."""
  topo = POD_TOPOLOGIES.get(name, name)
  m = re.fullmatch(r"(v4|v5p|v5e|v6e):(\d+(?:x\d+){1,2})", topo)
  if not m:
    raise AotError(f"--topology {name!r}: expected a pod name ({', '.join(sorted(POD_TOPOLOGIES))}) or "
                   "GENERATION:AxB[xC] with GENERATION in v4, v5p, v5e, v6e (e.g. v5p:4x4x4, v6e:16x16)")
  return topo, m.group(1)


def topology_devices(name: str) -> tuple[list, str, str]:
  """Abstract TPU devices of a topology (no TPU needed; libtpu compiles for them). -> (devices, topology, gen)."""
  topo, gen = resolve_topology(name)
  # libtpu takes a machine-wide lock meant for processes that own real TPU chips; compiling for abstract devices
  # owns none, and without this a second compile check (a parallel test, another user) fails to start.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  try:
    import libtpu  # noqa: F401  (the XLA:TPU compiler; get_topology_desc fails obscurely without it)
  except ImportError:
    raise AotError("TPU compile checks need libtpu: `pip install -e '.[tpu-aot]'` (setup.sh installs it)") from None
  from jax.experimental import topologies
  try:
    desc = topologies.get_topology_desc(platform="tpu", topology_name=topo, chip_config_name="default",
                                        chips_per_host_bounds=(2, 2, 1), num_slices=1)
  except Exception as e:  # libtpu's errors are long C++ traces; keep the first line
    raise AotError(f"--topology {name!r} ({topo}): libtpu rejected it: {str(e).splitlines()[0]}") from None
  return list(desc.devices), topo, gen


# ---- compile ----


def _abstract(shapes_and_shardings):
  import jax
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), *shapes_and_shardings)


# XLA:TPU's two wordings of "this program does not fit in HBM" (the second counts temporaries only).
_OOM = re.compile(r"Used ([\d.]+)([KMGT]?) of ([\d.]+)([KMGT]?) hbm|required for HLO temporaries \(([\d.]+)([KMGT]?)\) "
                  r"exceeds available HBM \(([\d.]+)([KMGT]?)\)")
_UNITS = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}


def parse_oom(message: str) -> tuple[float, float] | None:
  """(needed GiB, capacity GiB) from XLA:TPU's out-of-memory compile error, or None if it is another error."""
  m = _OOM.search(message)
  if not m:
    return None
  g = [x for x in m.groups() if x is not None]
  return (float(g[0]) * _UNITS[g[1]] / GiB, float(g[2]) * _UNITS[g[3]] / GiB)


def compile_stage(cfg, topology: str, budget_gib: float | None = None, config_name: str = "") -> Report:
  """Compile the train step that `pplx-jax train` would run for `cfg` on `topology`; never allocates."""
  import jax
  from flax import nnx

  from pplx_jax.core import config as config_lib
  from pplx_jax.core import sharding as shd
  from pplx_jax.models import attention as attn_lib
  from pplx_jax.models import encoder
  from pplx_jax.stages import optimizer as optimizer_lib
  from pplx_jax.stages import registry, trainer

  devices, topo, gen = topology_devices(topology)
  capacity, peak = CHIPS[gen]
  budget = float(budget_gib) if budget_gib else capacity
  try:
    model_cfg, mesh_shape, rules = trainer.validate(cfg, len(devices))
  except ValueError as e:  # shape/mesh problems are the config's: one line naming the keys, no traceback
    raise config_lib.ConfigError(f"{e} (topology {topo}, {len(devices)} chips)") from None
  stage = str(cfg.get("stage", ""))
  task_cls = registry.task_factory(stage)
  if not hasattr(task_cls, "for_compile"):
    raise config_lib.ConfigError(f"config.stage={stage!r} has no compile check yet (pretrain and contrastive do)")
  mesh = shd.make_mesh(mesh_shape, devices)
  gb = int(cfg.train.global_batch)
  with shd.activate(mesh, rules):
    impl = attn_lib.resolve_impl(model_cfg.attention_impl, shd.to_dtype(model_cfg.compute_dtype))
    task = task_cls.for_compile(cfg, model_cfg)
    graphdef, state = nnx.split(encoder.abstract_model(model_cfg))
    params = _abstract((nnx.to_pure_dict(state), nnx.to_pure_dict(shd.param_shardings(state, mesh, rules))))
    tx, schedule = optimizer_lib.make_optimizer(cfg.optimizer, int(cfg.train.steps))
    opt_state = _abstract((jax.eval_shape(tx.init, params), optimizer_lib.state_shardings(tx, params)))
    shapes = task.batch_shapes(gb)
    batch_sh = {k: shd.batch_sharding(mesh, rules, len(s)) for k, (s, _) in shapes.items()}
    batch = {k: jax.ShapeDtypeStruct(s, dt, sharding=batch_sh[k]) for k, (s, dt) in shapes.items()}
    step_fn = trainer.jit_train_step(trainer.make_train_step(task, graphdef, tx, schedule, int(cfg.train.seed)),
                                     mesh, jax.tree.map(lambda x: x.sharding, params),
                                     jax.tree.map(lambda x: x.sharding, opt_state), batch_sh)
    step = jax.ShapeDtypeStruct((), "int32", sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    t0 = time.perf_counter()
    lowered = step_fn.lower(params, opt_state, batch, step)
    model_flops = task.flops_per_step(model_cfg, gb) / len(devices)
    common = dict(config=config_name, stage=stage, topology=topo, chips=len(devices), mesh=dict(mesh_shape),
                  remat=model_cfg.remat, attention_impl=impl, global_batch=gb, capacity_gib=capacity,
                  budget_gib=budget, model_flops_per_chip=model_flops, ideal_seconds=model_flops / peak,
                  tokens_per_step=task.tokens_per_step(gb))
    try:
      compiled = lowered.compile()
    except Exception as e:  # XLA:TPU refuses programs that exceed HBM: that is the answer, not a crash
      oom = parse_oom(str(e))
      if oom is None:
        raise
      return Report(fits=False, total_gib=oom[0], compile_s=time.perf_counter() - t0,
                    message=f"XLA:TPU: {_OOM.search(str(e)).group(0)}", **common)
  compile_s = time.perf_counter() - t0
  ma = compiled.memory_analysis()
  parts = dict(argument=ma.argument_size_in_bytes, output=ma.output_size_in_bytes, alias=ma.alias_size_in_bytes,
               temp=ma.temp_size_in_bytes, code=ma.generated_code_size_in_bytes)
  total = (parts["argument"] + parts["output"] - parts["alias"] + parts["temp"] + parts["code"]) / GiB
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else (cost or {})
  xla_s = cost.get("optimal_seconds")
  return Report(fits=total <= budget, total_gib=total, compile_s=compile_s,
                compiled_flops_per_chip=cost.get("flops"), xla_seconds=xla_s if xla_s and xla_s > 0 else None,
                **{f"{k}_gib": v / GiB for k, v in parts.items()}, **common)


# ---- output ----


# What each policy saves for the backward pass is a superset of what the policies named here save ("full" saves
# nothing, "none" everything), so where one of these does not fit the policies listed after it cannot fit either.
SAVES_MORE_THAN = {"full": ("save_attention_out", "dots_with_no_batch_dims", "dots", "none"),
                   "dots_with_no_batch_dims": ("dots", "none"), "dots": ("none",), "save_attention_out": ("none",)}


def remat_sweep(cfg, topology: str, budget_gib: float | None = None, config_name: str = "",
                policies: tuple[str, ...] | None = None, on_report=None) -> tuple[list[Report], Report | None]:
  """Compile the step once per remat policy; the choice is the fastest by XLA's time estimate among those that fit
  (the estimate counts loop bodies once, but the policies share one loop structure, so it ranks them; without an
  estimate the smallest fitting program is chosen). A policy that saves more than one already found not to fit is
  not compiled (a paper-scale cell takes minutes per policy): its report says so and does not fit."""
  from pplx_jax.core.model_config import REMAT_POLICIES

  reports = []
  for policy in policies or REMAT_POLICIES:
    c = cfg.copy_and_resolve_references()
    c.model.remat = policy
    over = [r for r in reports if not r.fits and policy in SAVES_MORE_THAN.get(r.remat, ())]
    if over:
      reports.append(dataclasses.replace(over[0], remat=policy, fits=False, compile_s=0.0, argument_gib=None,
                                         output_gib=None, alias_gib=None, temp_gib=None, code_gib=None,
                                         compiled_flops_per_chip=None, xla_seconds=None,
                                         message=f"not compiled: saves more than remat={over[0].remat}, which "
                                                 f"needs {over[0].total_gib:.1f} GiB"))
    else:
      reports.append(compile_stage(c, topology, budget_gib=budget_gib, config_name=config_name))
    if on_report:  # a v5p cell compiles for minutes per policy: report each as it comes
      on_report(reports[-1])
  return reports, choose(reports)


def choose(reports) -> Report | None:
  """The fastest fitting report by XLA's estimate (the smallest when none has one); None when nothing fits."""
  fitting = [r for r in reports if r.fits]
  if not fitting:
    return None
  timed = [r for r in fitting if r.xla_seconds]
  return min(timed, key=lambda r: r.xla_seconds) if timed else min(fitting, key=lambda r: r.total_gib)


def format_sweep(reports: list[Report], best: Report | None) -> str:
  lines = ["remat sweep (per chip: total HBM / budget, XLA's step-time estimate):"]
  lines += [sweep_line(r, best is not None and r is best) for r in reports]
  lines.append(f"choice: remat={best.remat}" if best else "choice: none fits")
  return "\n".join(lines)


def sweep_line(r: Report, chosen: bool = False) -> str:
  if r.message.startswith("not compiled"):
    return f"  {r.remat:<24} {r.message}"
  return (f"  {r.remat:<24} {r.total_gib:7.2f} / {r.budget_gib:.0f} GiB  {'fits' if r.fits else 'DOES NOT FIT'}  "
          f"XLA {_secs(r.xla_seconds) if r.xla_seconds else 'n/a'}{'  <- chosen' if chosen else ''}")


def _gib(x):
  if x is None:
    return "n/a"
  return f"{x:.2f} GiB" if x >= 0.1 else f"{x * 1024:.1f} MiB"


def _secs(x):
  return f"{x:.2f} s" if x >= 0.1 else f"{x * 1e3:.2f} ms"


def format_report(r: Report) -> str:
  lines = [f"{r.config or r.stage} on {r.topology} ({r.chips} chips), mesh {r.mesh}, remat {r.remat}, "
           f"attention {r.attention_impl}, global batch {r.global_batch}",
           f"  HBM per chip: arguments {_gib(r.argument_gib)}, outputs {_gib(r.output_gib)}, donated/aliased "
           f"{_gib(r.alias_gib)}, temporaries {_gib(r.temp_gib)}, code {_gib(r.code_gib)}",
           f"  total {_gib(r.total_gib)} of {r.capacity_gib:.0f} GiB HBM"
           + (f" (budget {r.budget_gib:.0f} GiB)" if r.budget_gib != r.capacity_gib else "")]
  if r.message:
    lines.append(f"  {r.message}")
  if r.model_flops_per_chip:
    lines.append(f"  model FLOPs per chip {r.model_flops_per_chip:.3e} (flops.py: 3 x forward, full attention)"
                 + (f"; XLA's cost analysis {r.compiled_flops_per_chip:.3e} (scanned loop bodies counted once)"
                    if r.compiled_flops_per_chip else ""))
    lines.append(f"  step time at 100% MFU {_secs(r.ideal_seconds)}"
                 + (f"; XLA's estimate {_secs(r.xla_seconds)} (a lower bound: loop bodies counted once)"
                    if r.xla_seconds else "")
                 + (f"; {r.tokens_per_step / r.ideal_seconds / r.chips:,.0f} tokens/s/chip at 100% MFU"
                    if r.tokens_per_step else ""))
  if r.compile_s is not None:
    lines.append(f"  compiled in {r.compile_s:.0f} s")
  lines.append("  " + r.verdict())
  return "\n".join(lines)
