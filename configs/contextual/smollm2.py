"""Stage 3a from real weights: late-chunked WordNet documents (a title chunk, then chunks that only say "it"),
from the pair stage."""

from configs.contextual.base import base
from configs.model import smollm2_135m as model


def get_config():
  cfg = base(model.get_config())
  cfg.train.init_from = "runs/smollm2/pair"
  cfg.data.dir = "runs/smollm2/data"
  cfg.data.sources = ("wordnet",)
  cfg.data.query_len = 16
  cfg.data.chunk_len = 32
  cfg.data.max_chunks = 6  # WordNet documents have 4-6 chunks
  cfg.objective.temperature = 0.05
  cfg.objective.margin = -1.0
  cfg.objective.use_qq = False  # as the pair stage (configs/contrastive/smollm2.py)
  cfg.optimizer.lr = 5e-5
  cfg.optimizer.warmup_steps = 2
  cfg.train.steps = 8
  cfg.train.global_batch = 16
  cfg.train.log_every = 2
  cfg.train.eval_every = 0
  cfg.train.checkpoint_every = 8
  cfg.train.keep_checkpoints = 1
  cfg.eval.max_docs = 100
  return cfg
