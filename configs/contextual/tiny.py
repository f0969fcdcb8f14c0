"""CPU quickstart, stage 3a (contextual): WordNet contextual documents (a title chunk naming the synset, then
chunks that only say "it"), from the pair checkpoint. Evaluation: held-out synsets, late chunking vs chunk alone."""

from configs.contextual.base import base
from configs.model import tiny as tiny_model


def get_config():
  cfg = base(tiny_model.get_config())
  cfg.model.vocab_size = 4096
  cfg.model.tie_embeddings = False  # as the pretrained start (configs/pretrain/tiny.py says why)
  cfg.train.init_from = "runs/pipeline/pair"
  cfg.data.dir = "runs/pipeline/data"
  cfg.data.sources = ("wordnet",)
  cfg.data.query_len = 16
  cfg.data.chunk_len = 32
  cfg.data.max_chunks = 6  # WordNet documents have 4-6 chunks
  cfg.objective.temperature = 0.05
  cfg.optimizer.lr = 5e-4
  cfg.optimizer.warmup_steps = 10
  cfg.train.steps = 200
  cfg.train.global_batch = 32
  cfg.train.log_every = 25
  cfg.train.eval_every = 100
  cfg.train.checkpoint_every = 100
  cfg.eval.max_docs = 300
  return cfg
