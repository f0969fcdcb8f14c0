"""Shared contextual-stage config (paper §4.2: late-chunked chunks, L_ctx = β L_global + (1 - β) L_local)."""

import ml_collections

from pplx_jax.train.contextual import default_data_config, default_eval_config, default_objective_config
from pplx_jax.train.optimizer import default_config as optimizer_config
from pplx_jax.train.trainer import default_train_config


def base(model: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict()
  cfg.stage = "contextual"
  cfg.model = model
  cfg.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
  cfg.sharding = ml_collections.ConfigDict(dict(rules=()))
  cfg.data = default_data_config()
  cfg.objective = default_objective_config()  # α = 0.2, β cosine 0.2 -> 0.5, margin 0.1, q-q negatives
  cfg.eval = default_eval_config()
  cfg.optimizer = optimizer_config()
  cfg.optimizer.schedule = "cosine"
  cfg.optimizer.weight_decay = 0.01
  cfg.train = default_train_config()
  return cfg
