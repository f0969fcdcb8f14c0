"""The model's architecture fields: a frozen, hashable view of `config.model`.

The ConfigDict in `configs/model/*.py` is the source of truth; this dataclass is what the model code reads, so
that jit can treat it as static and a typo'd field fails here rather than deep inside a trace.

One model definition serves three decoder families; they differ only by these switches (defaults are Qwen3's):

    family    qk_norm  qkv_bias  o_bias  rope_type           as in transformers
    qwen3     yes      no        no      default             Qwen3Model
    llama     no       no        no*     default | llama3    LlamaModel (SmolLM2, Llama 3.x; *attention_bias)
    qwen2     no       yes       no      default             Qwen2Model (Qwen2 / Qwen2.5)

`family` names the Hugging Face architecture an export is written as. `lm_head=False` is an encoder-only model
(untied, no output head: how embedding models are shared); it embeds, but has no logits.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

ATTENTION_KINDS = ("bidirectional", "causal")
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "splash")
REMAT_POLICIES = ("none", "full", "dots", "dots_with_no_batch_dims", "save_attention_out")
DTYPES = ("float32", "bfloat16", "float16")
HELD_DTYPES = ("float32", "compute")  # what residual_dtype / projection_dtype hold a value in under mixed precision
FAMILIES = ("qwen3", "llama", "qwen2")
# The fields that change the function a checkpoint computes or the parameters it holds: a checkpoint can only be
# loaded into a config that agrees on all of them (the others are how to run it: attention kind, dtypes, remat).
ARCHITECTURE_FIELDS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "mlp_dim",
                       "rope_theta", "rms_norm_eps", "tie_embeddings", "lm_head", "family", "qk_norm", "qkv_bias",
                       "o_bias", "rope_type", "rope_factor", "rope_low_freq_factor", "rope_high_freq_factor",
                       "rope_original_max_positions")
ROPE_TYPES = ("default", "linear", "llama3")


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
  # The residual stream between layers: "float32" (the default: 16-bit sums over 30+ layers drift) or "compute"
  # (the compute dtype: under mixed precision this halves the layer inputs every remat policy keeps for the backward
  # pass, the largest item of a paper-scale step: docs/aot_sweep.md). Float32 compute makes both the same.
  residual_dtype: str = "float32"
  # The projections' outputs (q/k/v/o, the MLP) under mixed precision: "float32" (the default: XLA:CPU's fast 16-bit
  # kernels need a float32 output, models/precision.py) or "compute" (16-bit outputs, still accumulated in float32 by
  # the TPU MXU / GPU tensor cores: half the bytes of every projection's output; docs/aot_sweep.md measures it).
  projection_dtype: str = "float32"
  remat: str = "full"
  scan_layers: bool = True
  max_position_embeddings: int = 40_960
  family: str = "qwen3"
  qk_norm: bool = True
  qkv_bias: bool = False
  o_bias: bool = False
  lm_head: bool = True
  # RoPE frequency scaling (transformers' rope_parameters): "linear" divides every frequency by rope_factor; "llama3"
  # divides the low ones and interpolates the middle band (rope_low/high_freq_factor, rope_original_max_positions).
  rope_type: str = "default"
  rope_factor: float = 1.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_positions: int = 8192

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
                          ("param_dtype", DTYPES), ("compute_dtype", DTYPES),
                          ("residual_dtype", HELD_DTYPES), ("projection_dtype", HELD_DTYPES),
                          ("family", FAMILIES),
                          ("rope_type", ROPE_TYPES)):
      if getattr(self, name) not in allowed:
        problems.append(f"model.{name}={getattr(self, name)!r} is not one of {allowed}")
    if not self.lm_head and self.tie_embeddings:
      problems.append("model.lm_head=False (encoder-only) needs model.tie_embeddings=False: a tied head is the "
                      "embedding table, so it always exists")
    if self.rope_type != "default" and self.rope_factor <= 0:
      problems.append(f"model.rope_factor={self.rope_factor} must be positive for rope_type={self.rope_type!r}")
    if self.rope_type == "llama3" and self.rope_high_freq_factor <= self.rope_low_freq_factor:
      problems.append(f"model.rope_high_freq_factor={self.rope_high_freq_factor} must exceed "
                      f"model.rope_low_freq_factor={self.rope_low_freq_factor} (llama3 rope scaling)")
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

  @property
  def has_untied_head(self) -> bool:
    """A separate [hidden, vocab] output matrix exists (untied and not encoder-only)."""
    return not self.tie_embeddings and self.lm_head

  def num_params(self, include_embeddings: bool = True) -> int:
    """Parameter count from the shapes alone (what the published model sizes count)."""
    d, h, kv, hd, f = self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim, self.mlp_dim
    attn = d * h * hd + 2 * d * kv * hd + h * hd * d  # q, k, v, o
    attn += 2 * hd if self.qk_norm else 0
    attn += (h + 2 * kv) * hd if self.qkv_bias else 0
    attn += d if self.o_bias else 0
    mlp = 3 * d * f
    per_layer = attn + mlp + 2 * d  # two RMSNorms
    body = self.num_layers * per_layer + d  # final norm
    if not include_embeddings:
      return body
    emb = self.vocab_size * d * (2 if self.has_untied_head else 1)
    return body + emb
