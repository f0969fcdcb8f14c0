"""Paper scale, Qwen3-0.6B pair stage: 65,536 in-batch negatives with GradCache, int8 QAT, three-phase curriculum.

`get_config("v5p-64")`. Sources: English pairs, cross-lingual pairs, multilingual pairs (prepared with
`pplx-jax prepare-pairs` / `pplx_jax.stages.contrastive.prepare.prepare_pairs`); phases: English -> + cross-lingual -> all.
Settings shared with the other sizes: `configs/contrastive/base.py:paper_scale_pairs`.
"""

from configs.contrastive.base import paper_scale_pairs
from configs.model import qwen3_0_6b as model

# Pure FSDP on every target (`pplx-jax aot` checks each one; docs/aot.md).
MESHES = {t: dict(data=1, fsdp=-1, tensor=1) for t in ("v5p-64", "v5p-128", "v5p-256", "v6e-64", "v6e-256", "8xh100")}


def get_config(target: str = "v5p-64"):
  return paper_scale_pairs(model.get_config(), MESHES, target)
