"""The README's main job: the whole recipe at tiny scale on the CPU, on Debian's WordNet (about 19 min on 2 cores)."""

from configs.pipeline.base import base


def get_config():
  p = base({"pretrain": "configs/pretrain/tiny.py", "pair": "configs/contrastive/tiny.py",
            "contextual": "configs/contextual/tiny.py", "triplet": "configs/contrastive/tiny_triplet.py"})
  p.eval.dims = (16, 32, -1)  # the tiny model has 64 dimensions
  p.eval.max_length = 128
  return p
