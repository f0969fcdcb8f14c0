"""CPU quickstart, stage 2 (pairs): WordNet lemma / example sentence -> definition, from the tiny diffusion-
pretrained checkpoint. `tiny.py:causal_last` runs the paper's ablation (causal attention + last-token pooling)."""

from configs.contrastive.base import apply_variant, base
from configs.model import tiny as tiny_model


def get_config(variant: str = "bidirectional_mean"):
  cfg = base(tiny_model.get_config(), "pair")
  cfg.model.vocab_size = 4096
  cfg.train.init_from = "runs/pipeline/pretrain"
  cfg.data.dir = "runs/pipeline/data"
  cfg.data.sources = ("wordnet",)
  cfg.data.query_len = 24
  cfg.data.doc_len = 48
  # At this scale a low temperature collapses the encoder: the tiny diffusion-pretrained model's mean-pooled
  # similarities start out wrong (loss ~15 at 0.05 vs ln 64 = 4.2 for uniform ones), and the fastest way down is to
  # make every embedding the same (all cosines -> 0.99, loss -> ln N), a flat region it does not leave. Measured on
  # WordNet pairs from a 1,200-step pretrained tiny model: 0.05 and 0.1 collapse at lr 1e-4..1e-3; 0.3 trains
  # (held-out nDCG@10 0.002 -> 0.011 in 1,000 steps). Real Qwen3 starts do not need this.
  cfg.objective.temperature = 0.3
  cfg.objective.matryoshka_dims = (32, -1)
  cfg.objective.matryoshka_weights = (0.5, 1.0)
  cfg.optimizer.lr = 1e-3
  cfg.optimizer.warmup_steps = 20
  cfg.train.steps = 300
  cfg.train.global_batch = 64
  cfg.train.log_every = 25
  cfg.train.eval_every = 100
  cfg.train.checkpoint_every = 100
  cfg.eval.max_queries = 1000
  cfg.eval.dims = (32, -1)
  return apply_variant(cfg, variant)
