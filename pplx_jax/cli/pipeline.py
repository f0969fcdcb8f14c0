"""`pplx-jax pipeline`: the whole recipe from one config (`pplx_jax.recipe.pipeline`); every process of a pod runs
it, process 0 also merges, exports, evaluates and writes the report."""

from __future__ import annotations

import os

from pplx_jax.cli import common

HELP = "the whole recipe from one config: stages, merge, export, eval, report (README's main command)"


def add_args(p) -> None:
  p.add_argument("--config", required=True, help="a pipeline config, configs/pipeline/<name>.py[:arg]")
  p.add_argument("--workdir", required=True, help="where every stage, the merge, the export and the report go")
  p.add_argument("--force", action="store_true", help="delete the workdir first (start over)")
  common.add_distributed_args(p)


def run(args) -> int:
  common.initialize_distributed(args)  # before anything starts a JAX backend
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
  from pplx_jax.core import config as config_lib
  from pplx_jax.core import paths
  from pplx_jax.recipe.pipeline import run_pipeline

  cfg = config_lib.load_config(args.config, args.overrides)
  if args.force:
    paths.rmtree(args.workdir)  # local or gs://
  run_pipeline(cfg, args.workdir)
  return 0
