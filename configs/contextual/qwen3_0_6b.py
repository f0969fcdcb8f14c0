"""Paper scale, Qwen3-0.6B contextual stage (pplx-embed-context), from the pair-trained checkpoint.

Paper values: α = 0.2, β cosine 0.2 -> 0.5, false-negative margin 0.1, q-q negatives in L_global, int8 QAT.
Not in the paper (ours): chunks per document, chunk length, batch, steps, LR, τ. Sources: ConTEB train and
MLDR-derived synthetic documents, prepared with `pplx_jax.stages.contextual.prepare.prepare_contextual`.
"""

from configs.contextual.base import paper_scale
from configs.model import qwen3_0_6b as model

MESHES = {t: dict(data=1, fsdp=-1, tensor=1) for t in ("v5p-64", "v6e-64", "8xh100")}


def get_config(target: str = "v5p-64"):
  return paper_scale(model.get_config(), MESHES, target)
