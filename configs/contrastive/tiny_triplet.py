"""CPU quickstart, stage 3b (triplets with hard negatives: co-hyponym definitions), from the pair checkpoint."""

from configs.contrastive.base import base
from configs.model import tiny as tiny_model


def get_config():
  cfg = base(tiny_model.get_config(), "triplet")
  cfg.model.vocab_size = 4096
  cfg.model.tie_embeddings = False  # as the pretrained start (configs/pretrain/tiny.py says why)
  cfg.train.init_from = "runs/pipeline/pair"
  cfg.data.dir = "runs/pipeline/data"
  cfg.data.sources = ("wordnet_triplets",)
  cfg.data.query_len = 24
  cfg.data.doc_len = 48
  cfg.data.num_negatives = 3
  cfg.objective.temperature = 0.3  # as the tiny pair stage (0.05 collapses the tiny encoder; see tiny.py)
  cfg.objective.margin = -1.0  # the paper does not say the false-negative mask applies here
  cfg.objective.use_qq = False
  cfg.optimizer.lr = 5e-4
  cfg.optimizer.warmup_steps = 10
  cfg.train.steps = 150
  cfg.train.global_batch = 32
  cfg.train.log_every = 25
  cfg.train.eval_every = 75
  cfg.train.checkpoint_every = 75
  cfg.eval.max_queries = 1000
  cfg.eval.dims = (32, -1)
  return cfg
