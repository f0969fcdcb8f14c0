"""CPU quickstart: a tiny Qwen3 trained with masked diffusion on Debian's WordNet glosses and examples."""

from configs.model import tiny as tiny_model
from configs.pretrain.base import base


def get_config():
  cfg = base(tiny_model.get_config())
  cfg.model.vocab_size = 4096
  # Untied LM head (every tiny stage config follows, the architecture must match): with a tied head the softmax
  # pushes the input embeddings of the many rarely-predicted pieces along one shared direction (mean cosine between
  # token embeddings 0.74 after 2,000 steps; untied 0.01), which erases the bag-of-tokens signal mean pooling starts
  # from. Man-page nDCG@10 of the pair stage (apt, 500 steps, lr 1e-3 / 3e-3) from the tied start 0.027 / 0.029,
  # from the untied one 0.033 / 0.047 (benchmarks/README.md, "Held-out English").
  cfg.model.tie_embeddings = False
  cfg.data.tokenizer = "runs/pipeline/tokenizer"
  cfg.data.dir = "runs/pipeline/data"
  cfg.data.seq_len = 128
  cfg.objective.ce_chunk_size = 128
  cfg.optimizer.lr = 3e-3
  cfg.optimizer.warmup_steps = 20
  cfg.optimizer.decay_fraction = 0.2
  cfg.optimizer.weight_decay = 0.01
  # The contrastive stages need a pretrained encoder whose outputs still depend on their input. After 300 steps this
  # one is near a unigram model (held-out masked accuracy 0.14) and its mean-pooled embeddings are nearly one vector
  # (mean document cosine 0.76, 68% of the variance in one direction); pair training from it barely moves retrieval.
  # Measured on WordNet pairs with a plain InfoNCE loop (τ 0.3, lr 1e-3, 500 held-out queries), 300 pair steps from a
  # start pretrained for 300 / 1,000 / 2,000 steps: nDCG@10 0.002 / 0.008 / 0.017 (mean cosines 0.76 / 0.44 / 0.32).
  cfg.train.steps = 2000
  cfg.train.global_batch = 16
  cfg.train.log_every = 50
  cfg.train.eval_every = 250
  cfg.train.checkpoint_every = 250
  cfg.train.eval_batch = 16
  cfg.train.eval_batches = 4
  return cfg
