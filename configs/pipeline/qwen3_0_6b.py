"""Paper scale, Qwen3-0.6B on a pod: the stages of tiny.py from Hugging Face weights.

Set `--config.stages.pretrain.init_from=<Qwen3-0.6B-Base folder>` and `--config.tokenizer.path=<same folder>`, and
each stage's data sources, e.g. `--config.stages.pair.overrides="('--config.data.sources=(...)',)"` (or copy this
file). `get_config("v5p-128")` picks the pretraining target; the contrastive stages use their configs' defaults.
Compile checks for every stage before booking: `pplx-jax aot --config <stage config> --topology v5p:4x4x4`.
"""

from configs.pipeline.base import paper_scale


def get_config(target: str = "v5p-128"):
  return paper_scale("0_6b", "Qwen3-0.6B-Base", target)
