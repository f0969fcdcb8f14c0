"""Stage 1 from real weights: masked-diffusion continued pretraining of SmolLM2-135M (the bundled GGUF) as a
bidirectional encoder, on Debian's WordNet (`smollm2.py:local`: WordNet + apt package descriptions + stdlib
docstrings). The CPU budget allows a few dozen steps: the aim is to adapt the causal decoder to bidirectional
attention without losing what it knows, so the learning rate is a continued-pretraining one, not a from-scratch one.
"""

from configs.model import smollm2_135m as model
from configs.pretrain.base import base

SOURCES = {"wordnet": "wordnet", "local": "wordnet+apt+pydoc"}


def get_config(data: str = "wordnet"):
  if data not in SOURCES:
    raise ValueError(f"unknown data variant {data!r}; known: {sorted(SOURCES)}")
  cfg = base(model.get_config())
  cfg.train.init_from = model.gguf_path()
  cfg.data.source = SOURCES[data]
  cfg.data.tokenizer = ""  # the model's own (the GGUF's tokenizer.json)
  cfg.data.dir = "runs/smollm2/data"
  cfg.data.seq_len = 128  # packed WordNet glosses + examples; SmolLM2's tokens are whole words here
  # SmolLM2 has no mask or FIM token; <empty_output> (a Jupyter-notebook marker) never occurs in this text.
  cfg.objective.mask_token = "<empty_output>"
  cfg.objective.ce_chunk_size = 512
  # Used bidirectionally with mask tokens, the decoder starts near chance on held-out masked tokens (CE 9.25 at mask
  # ratio 0.15, ln V = 10.8). Measured from that start (batch 16 x 128): peak 5e-5 gives 8.27 after 4 steps, 3e-4
  # gives 6.38 after 4 and 5.49 after 8 (still falling, no instability), so the short budget takes the higher rate.
  cfg.optimizer.lr = 3e-4
  cfg.optimizer.warmup_steps = 2
  cfg.optimizer.decay_fraction = 0.25
  cfg.optimizer.weight_decay = 0.01
  cfg.train.steps = 20
  cfg.train.global_batch = 16
  cfg.train.log_every = 2
  cfg.train.eval_every = 5
  cfg.train.checkpoint_every = 20
  cfg.train.keep_checkpoints = 1
  cfg.train.eval_batch = 8
  cfg.train.eval_batches = 4
  return cfg
