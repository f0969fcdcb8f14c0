"""Shared contrastive-stage config (paper §4: pair stage 2, triplet stage 3b)."""

import ml_collections

from pplx_jax.train.contrastive import default_data_config, default_eval_config, default_objective_config
from pplx_jax.train.optimizer import default_config as optimizer_config
from pplx_jax.train.trainer import default_train_config


def base(model: ml_collections.ConfigDict, kind: str = "pair") -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict()
  cfg.stage = "contrastive"
  cfg.model = model
  cfg.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
  cfg.sharding = ml_collections.ConfigDict(dict(rules=()))
  cfg.data = default_data_config()
  cfg.objective = default_objective_config()
  cfg.objective.kind = kind
  cfg.eval = default_eval_config()
  cfg.optimizer = optimizer_config()
  cfg.optimizer.schedule = "cosine"
  cfg.optimizer.weight_decay = 0.01
  cfg.train = default_train_config()
  return cfg


def apply_variant(cfg: ml_collections.ConfigDict, variant: str | None) -> ml_collections.ConfigDict:
  """The paper's ablation from one switch: `causal_last` = the same start used as a decoder (causal attention,
  last-token pooling) instead of the bidirectional encoder with mean pooling."""
  if variant in (None, "", "bidirectional_mean"):
    return cfg
  if variant == "causal_last":
    cfg.model.attention = "causal"
    cfg.objective.pooling = "last"
    return cfg
  raise ValueError(f"unknown variant {variant!r}; known: bidirectional_mean, causal_last")
