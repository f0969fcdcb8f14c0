"""Shared stage-1 (masked-diffusion continued pretraining) config; the size files override what differs."""

import ml_collections

from pplx_jax.stages.optimizer import default_config as optimizer_config
from pplx_jax.stages.pretrain.task import default_data_config, default_objective_config
from pplx_jax.stages.trainer import default_train_config


def base(model: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict()
  cfg.stage = "pretrain"
  cfg.model = model
  cfg.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
  # Empty = pplx_jax.core.sharding.DEFAULT_RULES; otherwise a list of [logical_name, mesh_axes] pairs.
  cfg.sharding = ml_collections.ConfigDict(dict(rules=()))
  cfg.data = default_data_config()
  cfg.objective = default_objective_config()
  cfg.optimizer = optimizer_config()
  cfg.train = default_train_config()
  cfg.train.eval_batch = 8
  cfg.train.eval_batches = 4
  return cfg


def paper_scale(cfg: ml_collections.ConfigDict, meshes: dict, target: str, lr: float, size: str
                ) -> ml_collections.ConfigDict:
  """The paper's stage-1 settings: seq 4096, global batch 1024, 60k steps (~250B tokens), AdamW + WSD."""
  if target not in meshes:
    raise ValueError(f"unknown target {target!r}; known: {sorted(meshes)}")
  cfg.mesh.update(meshes[target])
  cfg.model.remat = "full"
  cfg.model.compute_dtype = "bfloat16"
  cfg.data.source = "REQUIRED: a dataset prepared with `pplx-jax prepare` (FineWeb-Edu + FineWeb2)"
  cfg.data.seq_len = 4096
  cfg.objective.ce_chunk_size = 512
  cfg.optimizer.lr = lr
  cfg.optimizer.warmup_steps = 2000
  cfg.optimizer.decay_fraction = 0.1
  cfg.train.steps = 60_000
  cfg.train.global_batch = 1024
  cfg.train.log_every = 50
  cfg.train.eval_every = 2000
  cfg.train.checkpoint_every = 1000
  cfg.train.eval_batch = 64
  cfg.train.eval_batches = 8
  cfg.train.init_from = f"REQUIRED: a Qwen3-{size}-Base checkpoint converted with `pplx-jax convert --to jax`"
  return cfg
