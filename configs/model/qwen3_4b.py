"""Qwen3-4B (Qwen/Qwen3-4B-Base): 4.02B parameters, 3.63B without embeddings."""
from configs.model._qwen3 import qwen3


def get_config():
  return qwen3(hidden_size=2560, num_layers=36, num_heads=32, num_kv_heads=8, mlp_dim=9728, tie_embeddings=True)
