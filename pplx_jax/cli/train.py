"""`pplx-jax train`: run (or resume) one stage from its config; every process of a pod runs the same command."""

from __future__ import annotations

from pplx_jax.cli import common

HELP = "train a stage (resumes from the newest checkpoint in --workdir)"


def add_args(p) -> None:
  p.add_argument("--config", required=True, help="configs/<stage>/<name>.py[:arg]")
  p.add_argument("--workdir", required=True)
  common.add_distributed_args(p)


def run(args) -> int:
  common.initialize_distributed(args)  # before anything starts a JAX backend
  from pplx_jax.core import config as config_lib
  from pplx_jax.stages import registry
  cfg = config_lib.load_config(args.config, args.overrides)
  result = registry.run_stage(cfg, args.workdir)
  print(f"[train] finished at step {result.step}; checkpoints in {result.workdir / 'checkpoints'}")
  return 0
