"""`pplx-jax aot --config C --topology v5p-128`: compile a stage's real train step for a TPU topology on this
machine (libtpu) and report per-chip HBM, FLOPs and whether it fits (`pplx_jax.stages.aot`)."""

from __future__ import annotations

import dataclasses
import json

HELP = "compile a stage's train step for a TPU topology on this machine: HBM, FLOPs, fit"


def _write_json(path, doc: dict) -> None:
  from pplx_jax.core import paths
  paths.write_text_atomic(path, json.dumps(doc, indent=2))  # local or gs://


def run(args) -> int:
  """`pplx-jax aot`: exit 0 when the step fits, 3 when it does not (2 for config errors, via the CLI)."""
  from pplx_jax.core import config as config_lib
  from pplx_jax.stages.aot import AotError, compile_stage, format_report

  cfg = config_lib.load_config(args.config, args.overrides)
  if args.remat_sweep:
    from pplx_jax.stages.aot import format_sweep, remat_sweep, sweep_line
    policies = tuple(p for p in args.remat_sweep.split(",") if p) if args.remat_sweep != "all" else None
    try:
      reports, best = remat_sweep(cfg, args.topology, budget_gib=args.budget_gib, config_name=str(args.config),
                                  policies=policies, on_report=lambda r: print(sweep_line(r), flush=True))
    except AotError as e:
      raise config_lib.ConfigError(str(e)) from None
    print(format_sweep(reports, best), flush=True)
    if args.json:
      _write_json(args.json, {"reports": [dataclasses.asdict(r) | {"verdict": r.verdict()} for r in reports],
                              "choice": best.remat if best else None})
    return 0 if best else 3
  try:
    report = compile_stage(cfg, args.topology, budget_gib=args.budget_gib, config_name=str(args.config))
  except AotError as e:
    raise config_lib.ConfigError(str(e)) from None
  print(format_report(report), flush=True)
  if args.json:
    _write_json(args.json, dataclasses.asdict(report) | {"verdict": report.verdict()})
  return 0 if report.fits else 3


def add_args(p) -> None:
  p.add_argument("--config", required=True, help="a stage config, e.g. configs/pretrain/qwen3_0_6b.py:v5p-128")
  p.add_argument("--topology", required=True,
                 help="a pod name (v5p-128, v6e-256, ...) or a topology (v5p:4x4x4, v6e:16x16, v5e:2x2)")
  p.add_argument("--budget-gib", type=float, default=None,
                 help="HBM per chip the step must fit in (default: the chip's capacity, e.g. 95 for v5p)")
  p.add_argument("--json", default="", help="also write the report here")
  p.add_argument("--remat-sweep", nargs="?", const="all", default="",
                 help="compile once per remat policy (all, or a comma list such as full,dots) and choose the "
                      "fastest that fits by XLA's estimate")
