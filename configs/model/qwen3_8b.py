"""Qwen3-8B: 8.19B parameters, 6.95B without embeddings; the only untied size here."""
from configs.model._qwen3 import qwen3


def get_config():
  return qwen3(hidden_size=4096, num_layers=36, num_heads=32, num_kv_heads=8, mlp_dim=12288, tie_embeddings=False)
