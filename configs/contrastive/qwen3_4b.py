"""Paper scale, Qwen3-4B pair stage: the 0.6B recipe (65,536 in-batch negatives, GradCache, int8 QAT) on the 4B
encoder. The paper gives no contrastive hyperparameters for either size; the learning rate is the 0.6B one."""

from configs.contrastive.base import paper_scale_pairs
from configs.model import qwen3_4b as model

MESHES = {t: dict(data=1, fsdp=-1, tensor=1) for t in ("v5p-64", "v5p-128", "v5p-256", "v6e-64", "v6e-256", "8xh100")}


def get_config(target: str = "v5p-256"):
  return paper_scale_pairs(model.get_config(), MESHES, target)
