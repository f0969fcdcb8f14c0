"""Paper scale, Qwen3-0.6B on a pod: the stages of tiny.py from Hugging Face weights.

Set `--config.stages.pretrain.init_from=<Qwen3-0.6B-Base folder>` and `--config.tokenizer.path=<same folder>`, and
each stage's data sources, e.g. `--config.stages.pair.overrides="('--config.data.sources=(...)',)"` (or copy this
file). `get_config("v5p-128")` picks the pretraining target; the contrastive stages use their configs' defaults.
Compile checks for every stage before booking: `pplx-jax aot --config <stage config> --topology v5p:4x4x4`.
"""

from configs.pipeline.base import base

# The triplet stage is the pair config with the triplet objective and hard-negative data (paper §4.3).
TRIPLET = ("--config.objective.kind=triplet", "--config.objective.use_qq=False", "--config.objective.margin=-1.0",
           "--config.data.sources=('REQUIRED: triplet dataset dir',)", "--config.data.phases=()")


def get_config(target: str = "v5p-128"):
  p = base({"pretrain": f"configs/pretrain/qwen3_0_6b.py:{target}", "pair": "configs/contrastive/qwen3_0_6b.py",
            "contextual": "configs/contextual/qwen3_0_6b.py", "triplet": "configs/contrastive/qwen3_0_6b.py"},
           pretrain_init="REQUIRED: the Qwen3-0.6B-Base Hugging Face folder", triplet_overrides=TRIPLET)
  p.tokenizer.path = "REQUIRED: the Qwen3-0.6B-Base Hugging Face folder (tokenizer.json)"
  p.eval.data = "REQUIRED: a held-out pairs dataset (prepared with pplx-jax prepare)"
  p.eval.contextual_data = "REQUIRED: a held-out contextual dataset (ConTEB test sets prepared as documents)"
  p.eval.dims = (64, 128, 256, 512, -1)
  return p
