"""A tiny Qwen3 for CPU tests and the quickstart. head_dim != hidden/heads on purpose."""
from configs.model._qwen3 import qwen3


def get_config():
  return qwen3(vocab_size=4096, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=32,
               mlp_dim=128, rope_theta=10_000.0, tie_embeddings=True, compute_dtype="float32",
               remat="none", max_position_embeddings=2048)
