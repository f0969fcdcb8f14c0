"""CPU quickstart: a tiny Qwen3 trained with masked diffusion on Debian's WordNet glosses and examples."""

from configs.model import tiny as tiny_model
from configs.pretrain.base import base


def get_config():
  cfg = base(tiny_model.get_config())
  cfg.model.vocab_size = 4096
  cfg.data.tokenizer = "runs/pipeline/tokenizer"
  cfg.data.dir = "runs/pipeline/data"
  cfg.data.seq_len = 128
  cfg.objective.ce_chunk_size = 128
  cfg.optimizer.lr = 3e-3
  cfg.optimizer.warmup_steps = 20
  cfg.optimizer.decay_fraction = 0.2
  cfg.optimizer.weight_decay = 0.01
  cfg.train.steps = 300
  cfg.train.global_batch = 16
  cfg.train.log_every = 25
  cfg.train.eval_every = 100
  cfg.train.checkpoint_every = 100
  cfg.train.eval_batch = 16
  cfg.train.eval_batches = 4
  return cfg
