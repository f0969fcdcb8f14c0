"""Qwen3-1.7B: 1.72B parameters, 1.41B without embeddings."""
from configs.model._qwen3 import qwen3


def get_config():
  return qwen3(hidden_size=2048, num_layers=28, num_heads=16, num_kv_heads=8, mlp_dim=6144, tie_embeddings=True)
