"""Paper scale, Qwen3-0.6B: seq 4096, global batch 1024, 60k steps (~250B tokens), AdamW + WSD at peak 5e-4.

Start from Hugging Face weights converted with `pplx-jax convert Qwen3-0.6B-Base runs/qwen3-0.6b --to jax`, then
`--config.train.init_from=runs/qwen3-0.6b --config.data.source=<prepared dataset dir>`. `get_config("v5p-128")`
(i.e. `--config configs/pretrain/qwen3_0_6b.py:v5p-128`) selects the mesh for a target.
"""

from configs.model import qwen3_0_6b as model
from configs.pretrain.base import base, paper_scale

# Pure FSDP on every target (`pplx-jax aot` checks each one; docs/aot.md).
MESHES = {t: dict(data=1, fsdp=-1, tensor=1) for t in ("v5p-64", "v5p-128", "v5p-256", "v6e-64", "v6e-256", "8xh100")}


def get_config(target: str = "v5p-128"):
  return paper_scale(base(model.get_config()), MESHES, target, lr=5e-4, size="0.6B")
