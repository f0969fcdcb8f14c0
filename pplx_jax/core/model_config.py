"""The model's architecture fields: a frozen, hashable view of `config.model`.

The ConfigDict in `configs/model/*.py` is the source of truth; this dataclass is what the model code reads, so
that jit can treat it as static and a typo'd field fails here rather than deep inside a trace.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

ATTENTION_KINDS = ("bidirectional", "causal")
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "splash")
REMAT_POLICIES = ("none", "full", "dots", "dots_with_no_batch_dims", "save_attention_out")
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  rope_theta: float = 1_000_000.0
  rms_norm_eps: float = 1e-6
  tie_embeddings: bool = True
  attention: str = "bidirectional"
  attention_impl: str = "auto"
  param_dtype: str = "float32"
  compute_dtype: str = "bfloat16"
  remat: str = "full"
  scan_layers: bool = True
  max_position_embeddings: int = 40_960

  def __post_init__(self):
    problems = []
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "mlp_dim"):
      if int(getattr(self, name)) <= 0:
        problems.append(f"model.{name} must be positive, got {getattr(self, name)}")
    if self.num_kv_heads > 0 and self.num_heads % self.num_kv_heads:
      problems.append(f"model.num_heads={self.num_heads} is not a multiple of model.num_kv_heads={self.num_kv_heads} "
                      "(grouped-query attention shares each KV head among a whole number of query heads)")
    if self.head_dim % 2:
      problems.append(f"model.head_dim={self.head_dim} must be even for rotary embeddings")
    for name, allowed in (("attention", ATTENTION_KINDS), ("attention_impl", ATTENTION_IMPLS), ("remat", REMAT_POLICIES),
                          ("param_dtype", DTYPES), ("compute_dtype", DTYPES)):
      if getattr(self, name) not in allowed:
        problems.append(f"model.{name}={getattr(self, name)!r} is not one of {allowed}")
    if problems:
      raise ValueError("invalid model config:\n  " + "\n  ".join(problems))

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
    d = dict(d.to_dict() if hasattr(d, "to_dict") else d)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f"unknown model config keys {unknown}; known keys: {sorted(known)}")
    return cls(**d)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  @property
  def causal(self) -> bool:
    return self.attention == "causal"

  def num_params(self, include_embeddings: bool = True) -> int:
    """Parameter count from the shapes alone (what the published model sizes count)."""
    d, h, kv, hd, f = self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim, self.mlp_dim
    attn = d * h * hd + 2 * d * kv * hd + h * hd * d + 2 * hd  # q, k, v, o, q_norm, k_norm
    mlp = 3 * d * f
    per_layer = attn + mlp + 2 * d  # two RMSNorms
    body = self.num_layers * per_layer + d  # final norm
    if not include_embeddings:
      return body
    emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
    return body + emb
