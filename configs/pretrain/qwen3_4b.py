"""Paper scale, Qwen3-4B: seq 4096, global batch 1024, 60k steps, AdamW + WSD at peak 3.16e-4."""

from configs.model import qwen3_4b as model
from configs.pretrain.base import base

MESHES = {
    "v5p-256": dict(data=1, fsdp=-1, tensor=1),
    "v6e-256": dict(data=1, fsdp=-1, tensor=1),
    "8xh100": dict(data=1, fsdp=-1, tensor=1),
}


def get_config(target: str = "v5p-256"):
  cfg = base(model.get_config())
  if target not in MESHES:
    raise ValueError(f"unknown target {target!r}; known: {sorted(MESHES)}")
  cfg.mesh.update(MESHES[target])
  cfg.model.remat = "full"
  cfg.model.compute_dtype = "bfloat16"
  cfg.data.source = "REQUIRED: a dataset prepared with `pplx-jax prepare` (FineWeb-Edu + FineWeb2)"
  cfg.data.seq_len = 4096
  cfg.objective.ce_chunk_size = 512
  cfg.optimizer.lr = 3.16e-4
  cfg.optimizer.warmup_steps = 2000
  cfg.optimizer.decay_fraction = 0.1
  cfg.train.steps = 60_000
  cfg.train.global_batch = 1024
  cfg.train.log_every = 50
  cfg.train.eval_every = 2000
  cfg.train.checkpoint_every = 1000
  cfg.train.eval_batch = 64
  cfg.train.eval_batches = 8
  cfg.train.init_from = "REQUIRED: a Qwen3-4B-Base checkpoint converted with `pplx-jax convert --to jax`"
  return cfg
