"""CPU quickstart, stage 2 (pairs): apt package short description -> long description, from the tiny diffusion-
pretrained checkpoint. `tiny.py:causal_last` runs the paper's ablation (causal attention + last-token pooling)."""

from configs.contrastive.base import apply_variant, base
from configs.model import tiny as tiny_model


def get_config(variant: str = "bidirectional_mean"):
  cfg = base(tiny_model.get_config(), "pair")
  cfg.model.vocab_size = 4096
  cfg.model.tie_embeddings = False  # as the pretrained start (configs/pretrain/tiny.py says why)
  cfg.train.init_from = "runs/pipeline/pretrain"
  cfg.data.dir = "runs/pipeline/data"
  # apt's package descriptions (short -> long description), not WordNet's lemma -> gloss pairs: WordNet pairs share
  # few words, so training on them unlearns the lexical matching a random-init encoder starts with, and the model ranks
  # held-out English (man pages, benchmarks/heldout_english.py) worse than untrained. Measured, 500 steps from the tiny
  # pretrained encoder, man-page nDCG@10: wordnet 0.017, wordnet+apt (sizes 4:1) 0.018, apt 0.035 (held-out WordNet
  # 0.011 -> 0.007); benchmarks/README.md, "Held-out English".
  cfg.data.sources = ("apt",)
  cfg.data.query_len = 24
  cfg.data.doc_len = 48
  # Tiny-scale choices, measured on held-out WordNet (1,000 queries, 5.9k glosses) from the tiny pretrained encoder
  # (configs/pretrain/tiny.py, whose 2,000 steps are the main lever, see there):
  # - temperature 0.3: 0.05-0.1 make the 64-dimensional encoder collapse (every cosine -> 0.9+, loss -> ln N), since
  #   random 64-d cosines spread ~0.13, which is already a wide logit spread at a low temperature; 0.1 is no better.
  # - no false-negative margin and no query-query negatives (the paper's loss; on by default, used at scale): from a
  #   start this weak, s(q, d_j) > s(q, d_i) + 0.1 holds for a third of all pairs, so the mask drops the negatives
  #   that carry the signal. 250 steps without q-q negatives: nDCG@10 0.002 -> 0.004 with the margin, 0.010 without;
  #   1,000 steps from a 1,000-step start: 0.002 -> 0.004 with both, 0.010 with neither.
  # Real Qwen3 starts do not need either.
  cfg.objective.temperature = 0.3
  cfg.objective.margin = -1.0
  cfg.objective.use_qq = False
  cfg.objective.matryoshka_dims = (32, -1)
  cfg.objective.matryoshka_weights = (0.5, 1.0)
  # lr 3e-3 (the stage has to undo the pretrained start's collapse, mean document cosine 0.66, not preserve it):
  # man-page nDCG@10 after 500 steps from the tied start 0.018 / 0.027 / 0.029 at lr 3e-4 / 1e-3 / 3e-3, from the
  # untied one (configs/pretrain/tiny.py) 0.033 / 0.047 at 1e-3 / 3e-3; fewer steps were worse (tied, 1e-3, 250: 0.025).
  cfg.optimizer.lr = 3e-3
  cfg.optimizer.warmup_steps = 20
  cfg.train.steps = 500
  cfg.train.global_batch = 64
  cfg.train.log_every = 25
  cfg.train.eval_every = 125
  cfg.train.checkpoint_every = 125
  cfg.eval.max_queries = 1000
  cfg.eval.dims = (32, -1)
  return apply_variant(cfg, variant)
