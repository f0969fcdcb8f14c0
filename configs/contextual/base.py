"""Shared contextual-stage config (paper §4.2: late-chunked chunks, L_ctx = β L_global + (1 - β) L_local)."""

import ml_collections

from pplx_jax.stages.contextual.task import (
  default_data_config,
  default_eval_config,
  default_objective_config,
)
from pplx_jax.stages.optimizer import default_config as optimizer_config
from pplx_jax.stages.trainer import default_train_config


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


def paper_scale(model: ml_collections.ConfigDict, meshes: dict, target: str) -> ml_collections.ConfigDict:
  """The contextual stage at paper scale, from the pair-trained checkpoint (values in qwen3_0_6b.py's docstring)."""
  if target not in meshes:
    raise ValueError(f"unknown target {target!r}; known: {sorted(meshes)}")
  cfg = base(model)
  cfg.mesh.update(meshes[target])
  cfg.model.remat = "full"
  cfg.train.init_from = "REQUIRED: the pair-stage workdir (configs/contrastive/qwen3_0_6b.py)"
  cfg.data.sources = ("REQUIRED: ConTEB train contextual dataset dir", "REQUIRED: MLDR synthetic contextual dir")
  cfg.data.weights = (0.5, 0.5)
  cfg.data.query_len = 128
  cfg.data.chunk_len = 256
  cfg.data.max_chunks = 16  # 16 x 256 tokens = a 4,111-token document pass (one low-reliability source's figure)
  cfg.objective.temperature = 0.02
  cfg.objective.alpha = 0.2
  cfg.objective.beta_start, cfg.objective.beta_end = 0.2, 0.5
  cfg.objective.margin = 0.1
  cfg.objective.use_qq = True
  cfg.optimizer.lr = 5e-6
  cfg.optimizer.warmup_steps = 100
  cfg.train.steps = 3000
  cfg.train.global_batch = 1024
  cfg.train.log_every = 10
  cfg.train.eval_every = 250
  cfg.train.checkpoint_every = 250
  cfg.eval.data = "REQUIRED: a held-out contextual dataset (e.g. ConTEB test sets prepared as documents)"
  cfg.eval.max_docs = -1
  return cfg
