"""Paper scale, Qwen3-4B on a pod: the stages of tiny.py from Hugging Face weights.

Set `--config.stages.pretrain.init_from=<Qwen3-4B-Base folder>` and `--config.tokenizer.path=<same folder>`, and
each stage's data sources, e.g. `--config.stages.pair.overrides="('--config.data.sources=(...)',)"` (or copy this
file). `get_config("v5p-256")` picks the pretraining target; the contrastive stages use their configs' defaults.
Compile checks for every stage before booking: `pplx-jax aot --config <stage config> --topology v5p:4x4x4`.
"""

from configs.pipeline.base import base
from configs.pipeline.qwen3_0_6b import TRIPLET  # the triplet stage is built the same way for both sizes


def get_config(target: str = "v5p-256"):
  p = base({"pretrain": f"configs/pretrain/qwen3_4b.py:{target}", "pair": "configs/contrastive/qwen3_4b.py",
            "contextual": "configs/contextual/qwen3_4b.py", "triplet": "configs/contrastive/qwen3_4b.py"},
           pretrain_init="REQUIRED: the Qwen3-4B-Base Hugging Face folder", triplet_overrides=TRIPLET)
  p.tokenizer.path = "REQUIRED: the Qwen3-4B-Base Hugging Face folder (tokenizer.json)"
  p.eval.data = "REQUIRED: a held-out pairs dataset (prepared with pplx-jax prepare)"
  p.eval.contextual_data = "REQUIRED: a held-out contextual dataset (ConTEB test sets prepared as documents)"
  p.eval.dims = (64, 128, 256, 512, -1)
  return p
