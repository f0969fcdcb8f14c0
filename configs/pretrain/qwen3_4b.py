"""Paper scale, Qwen3-4B: seq 4096, global batch 1024, 60k steps, AdamW + WSD at peak 3.16e-4."""

from configs.model import qwen3_4b as model
from configs.pretrain.base import base, paper_scale

# Pure FSDP on every target (`pplx-jax aot` checks each one; docs/aot.md).
MESHES = {t: dict(data=1, fsdp=-1, tensor=1) for t in ("v5p-64", "v5p-128", "v5p-256", "v6e-64", "v6e-256", "8xh100")}


def get_config(target: str = "v5p-256"):
  return paper_scale(base(model.get_config()), MESHES, target, lr=3.16e-4, size="4B")
