"""Shared stage-1 (masked-diffusion continued pretraining) config; the size files override what differs."""

import ml_collections

from pplx_jax.train.optimizer import default_config as optimizer_config
from pplx_jax.train.pretrain import default_data_config, default_objective_config
from pplx_jax.train.trainer import default_train_config


def base(model: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict()
  cfg.stage = "pretrain"
  cfg.model = model
  cfg.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
  # Empty = pplx_jax.sharding.DEFAULT_RULES; otherwise a list of [logical_name, mesh_axes] pairs.
  cfg.sharding = ml_collections.ConfigDict(dict(rules=()))
  cfg.data = default_data_config()
  cfg.objective = default_objective_config()
  cfg.optimizer = optimizer_config()
  cfg.train = default_train_config()
  cfg.train.eval_batch = 8
  cfg.train.eval_batches = 4
  return cfg
