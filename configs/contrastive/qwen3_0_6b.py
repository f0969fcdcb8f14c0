"""Paper scale, Qwen3-0.6B pair stage: 65,536 in-batch negatives with GradCache, int8 QAT, three-phase curriculum.

`get_config("v5p-64")`. Sources: English pairs, cross-lingual pairs, multilingual pairs (prepared with
`pplx-jax prepare-pairs` / `pplx_jax.data.pairs.prepare_pairs`); phases: English -> + cross-lingual -> all.
"""

from configs.contrastive.base import apply_variant, base
from configs.model import qwen3_0_6b as model

MESHES = {"v5p-64": dict(data=1, fsdp=-1, tensor=1), "v6e-64": dict(data=1, fsdp=-1, tensor=1),
          "8xh100": dict(data=1, fsdp=-1, tensor=1)}


def get_config(target: str = "v5p-64"):
  cfg = base(model.get_config(), "pair")
  if target not in MESHES:
    raise ValueError(f"unknown target {target!r}; known: {sorted(MESHES)}")
  cfg.mesh.update(MESHES[target])
  cfg.model.remat = "full"
  cfg.train.init_from = "REQUIRED: the diffusion-pretrained workdir (configs/pretrain/qwen3_0_6b.py)"
  cfg.data.sources = ("REQUIRED: english pairs dir", "REQUIRED: cross-lingual pairs dir",
                      "REQUIRED: multilingual pairs dir")
  cfg.data.phases = ({"until_step": 4000, "weights": [1.0, 0.0, 0.0]},
                     {"until_step": 8000, "weights": [0.6, 0.4, 0.0]},
                     {"until_step": 12000, "weights": [0.4, 0.2, 0.4]})
  cfg.data.query_len = 128
  cfg.data.doc_len = 512
  cfg.objective.temperature = 0.02
  cfg.objective.gradcache_chunks = 64  # 1,024 sequences per chunk, spread over every chip
  cfg.objective.matryoshka_dims = (128, 256, 512, -1)
  cfg.objective.matryoshka_weights = (0.25, 0.25, 0.5, 1.0)
  cfg.optimizer.lr = 1e-5
  cfg.optimizer.warmup_steps = 200
  cfg.train.steps = 12_000
  cfg.train.global_batch = 65_536
  cfg.train.log_every = 10
  cfg.train.eval_every = 500
  cfg.train.checkpoint_every = 500
  return cfg
