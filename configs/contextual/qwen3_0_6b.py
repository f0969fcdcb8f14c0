"""Paper scale, Qwen3-0.6B contextual stage (pplx-embed-context), from the pair-trained checkpoint.

Paper values: α = 0.2, β cosine 0.2 -> 0.5, false-negative margin 0.1, q-q negatives in L_global, int8 QAT.
Not in the paper (ours): chunks per document, chunk length, batch, steps, LR, τ. Sources: ConTEB train and
MLDR-derived synthetic documents, prepared with `pplx_jax.data.contextual.prepare_contextual`.
"""

from configs.contextual.base import base
from configs.model import qwen3_0_6b as model

MESHES = {"v5p-64": dict(data=1, fsdp=-1, tensor=1), "v6e-64": dict(data=1, fsdp=-1, tensor=1),
          "8xh100": dict(data=1, fsdp=-1, tensor=1)}


def get_config(target: str = "v5p-64"):
  if target not in MESHES:
    raise ValueError(f"unknown target {target!r}; known: {sorted(MESHES)}")
  cfg = base(model.get_config())
  cfg.mesh.update(MESHES[target])
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
