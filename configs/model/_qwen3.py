"""Shared Qwen3 architecture fields; each size file overrides what differs. Every `ModelConfig` field is in the
dict (the family switches at their Qwen3 defaults), so any of them can be overridden from the command line."""

import dataclasses

import ml_collections

from pplx_jax.core.model_config import ModelConfig


def qwen3(**overrides) -> ml_collections.ConfigDict:
  return model_fields(dict(
      vocab_size=151_936,
      hidden_size=1024,
      num_layers=28,
      num_heads=16,
      num_kv_heads=8,
      head_dim=128,
      mlp_dim=3072,
      rope_theta=1_000_000.0,
      rms_norm_eps=1e-6,
      tie_embeddings=True,
      # The pplx-embed encoder: every real token sees every other token of its segment.
      attention="bidirectional",
      attention_impl="auto",
      param_dtype="float32",
      compute_dtype="bfloat16",
      remat="full",
      scan_layers=True,
      max_position_embeddings=40_960,
  ), **overrides)


def model_fields(base: dict, **overrides) -> ml_collections.ConfigDict:
  """`base` completed with every other ModelConfig field's default, then `overrides` (unknown keys fail)."""
  cfg = ml_collections.ConfigDict({**{f.name: f.default for f in dataclasses.fields(ModelConfig)
                                      if f.default is not dataclasses.MISSING}, **base})
  for k, v in overrides.items():
    if k not in cfg:
      raise KeyError(f"unknown model field {k!r}")
    cfg[k] = v
  return cfg
