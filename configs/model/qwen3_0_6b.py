"""Qwen3-0.6B (Qwen/Qwen3-0.6B-Base): 596M parameters, 440M without embeddings."""
from configs.model._qwen3 import qwen3


def get_config():
  return qwen3(hidden_size=1024, num_layers=28, num_heads=16, num_kv_heads=8, mlp_dim=3072, tie_embeddings=True)
