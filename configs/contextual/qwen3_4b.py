"""Paper scale, Qwen3-4B contextual stage: the 0.6B settings (configs/contextual/qwen3_0_6b.py) on the 4B encoder;
the paper gives no contextual hyperparameters per size."""

from configs.contextual.base import paper_scale
from configs.model import qwen3_4b as model

MESHES = {t: dict(data=1, fsdp=-1, tensor=1) for t in ("v5p-128", "v5p-256", "v6e-256", "8xh100")}


def get_config(target: str = "v5p-256"):
  return paper_scale(model.get_config(), MESHES, target)
