"""Shared contrastive-stage config (paper §4: pair stage 2, triplet stage 3b)."""

import ml_collections

from pplx_jax.stages.contrastive.task import (
  default_data_config,
  default_eval_config,
  default_objective_config,
)
from pplx_jax.stages.optimizer import default_config as optimizer_config
from pplx_jax.stages.trainer import default_train_config


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


def paper_scale_pairs(model: ml_collections.ConfigDict, meshes: dict, target: str, variant: str | None = None
                      ) -> ml_collections.ConfigDict:
  """The pair stage at paper scale: 65,536 in-batch negatives with GradCache, int8 QAT, three-phase curriculum."""
  cfg = base(model, "pair")
  if target not in meshes:
    raise ValueError(f"unknown target {target!r}; known: {sorted(meshes)}")
  cfg.mesh.update(meshes[target])
  cfg.model.remat = "full"
  cfg.train.init_from = "REQUIRED: the diffusion-pretrained workdir (configs/pretrain/qwen3_*.py)"
  cfg.data.sources = ("REQUIRED: english pairs dir", "REQUIRED: cross-lingual pairs dir",
                      "REQUIRED: multilingual pairs dir")
  cfg.data.phases = ({"until_step": 4000, "weights": [1.0, 0.0, 0.0]},
                     {"until_step": 8000, "weights": [0.6, 0.4, 0.0]},
                     {"until_step": 12000, "weights": [0.4, 0.2, 0.4]})
  cfg.data.query_len = 128
  cfg.data.doc_len = 512
  cfg.objective.temperature = 0.02
  cfg.objective.gradcache_chunks = 64  # 1,024 sequences per chunk, spread over every chip
  cfg.objective.matryoshka_dims = (128, 256, 512, -1)
  cfg.objective.matryoshka_weights = (0.25, 0.25, 0.5, 1.0)
  cfg.optimizer.lr = 1e-5
  cfg.optimizer.warmup_steps = 200
  cfg.train.steps = 12_000
  cfg.train.global_batch = 65_536
  cfg.train.log_every = 10
  cfg.train.eval_every = 500
  cfg.train.checkpoint_every = 500
  return apply_variant(cfg, variant)
