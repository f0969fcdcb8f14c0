"""Stage name (config.stage) -> the Task that trains it with the shared trainer."""

from __future__ import annotations

from pathlib import Path

import ml_collections

from pplx_jax.core.config import ConfigError


def task_factory(stage: str):
  if stage == "pretrain":
    from pplx_jax.stages.pretrain.task import PretrainTask
    return PretrainTask
  if stage == "contrastive":
    from pplx_jax.stages.contrastive.task import ContrastiveTask
    return ContrastiveTask
  if stage == "contextual":
    from pplx_jax.stages.contextual.task import ContextualTask
    return ContextualTask
  raise ConfigError(f"config.stage={stage!r} is not a known stage (known: 'pretrain', 'contrastive', 'contextual')")


def run_stage(cfg: ml_collections.ConfigDict, workdir: str | Path, stop_after: int | None = None, devices=None):
  from pplx_jax.stages import trainer
  return trainer.train(cfg, workdir, task_factory(str(cfg.get("stage", ""))), stop_after=stop_after, devices=devices)
