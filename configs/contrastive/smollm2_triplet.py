"""Stage 3b from real weights: triplets with WordNet hard negatives (co-hyponym definitions), from the pair stage."""

from configs.contrastive.smollm2 import get_config as pair_config


def get_config():
  cfg = pair_config()
  cfg.objective.kind = "triplet"
  cfg.objective.use_qq = False
  cfg.train.init_from = "runs/smollm2/pair"
  cfg.data.sources = ("wordnet_triplets",)
  cfg.data.num_negatives = 3
  cfg.optimizer.lr = 5e-5
  cfg.train.steps = 10
  cfg.train.global_batch = 16
  cfg.train.checkpoint_every = 10
  return cfg
