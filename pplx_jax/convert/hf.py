"""Qwen3 <-> Hugging Face: a declarative name map, config translation and safetensors I/O.

Transforms are exact (transposes and reshapes only), so HF -> pplx-jax -> HF reproduces every tensor bit for bit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from pplx_jax.core.errors import UserError
from pplx_jax.core.model_config import ModelConfig

SUPPORTED_ARCHITECTURES = ("Qwen3ForCausalLM", "Qwen3Model", "PPLXQwen3Model", "Qwen3ForSequenceClassification")
SUPPORTED_MODEL_TYPES = ("qwen3", "bidirectional_pplx_qwen3")
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3  # transformers' default max_shard_size ("5GB")

# pplx-jax layer param -> (HF name under model.layers.{i}., to_jax(hf, cfg), to_hf(ours, cfg))
_T = lambda w, c: w.T
LAYER_MAP: dict[str, tuple[str, Callable, Callable]] = {
    "q_proj": ("self_attn.q_proj.weight", lambda w, c: w.T.reshape(c.hidden_size, c.num_heads, c.head_dim),
               lambda w, c: w.reshape(c.hidden_size, -1).T),
    "k_proj": ("self_attn.k_proj.weight", lambda w, c: w.T.reshape(c.hidden_size, c.num_kv_heads, c.head_dim),
               lambda w, c: w.reshape(c.hidden_size, -1).T),
    "v_proj": ("self_attn.v_proj.weight", lambda w, c: w.T.reshape(c.hidden_size, c.num_kv_heads, c.head_dim),
               lambda w, c: w.reshape(c.hidden_size, -1).T),
    "o_proj": ("self_attn.o_proj.weight", lambda w, c: w.T.reshape(c.num_heads, c.head_dim, c.hidden_size),
               lambda w, c: w.reshape(-1, c.hidden_size).T),
    "q_norm": ("self_attn.q_norm.weight", lambda w, c: w, lambda w, c: w),
    "k_norm": ("self_attn.k_norm.weight", lambda w, c: w, lambda w, c: w),
    "input_layernorm": ("input_layernorm.weight", lambda w, c: w, lambda w, c: w),
    "post_attention_layernorm": ("post_attention_layernorm.weight", lambda w, c: w, lambda w, c: w),
    "gate_proj": ("mlp.gate_proj.weight", _T, _T),
    "up_proj": ("mlp.up_proj.weight", _T, _T),
    "down_proj": ("mlp.down_proj.weight", _T, _T),
}


class ConversionError(UserError):
  pass


# ---------------------------------------------------------------------------------------------------- config


def model_config_from_hf(hf: Mapping[str, Any], source: str = "config.json", **overrides) -> ModelConfig:
  archs = hf.get("architectures") or []
  model_type = hf.get("model_type")
  if model_type not in SUPPORTED_MODEL_TYPES or (archs and not any(a in SUPPORTED_ARCHITECTURES for a in archs)):
    raise ConversionError(f"{source}: unsupported architecture {archs or model_type!r} (model_type={model_type!r}); "
                          f"pplx-jax converts {SUPPORTED_ARCHITECTURES}")
  for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
    if key not in hf:
      raise ConversionError(f"{source}: missing key {key!r}")
  if hf.get("attention_bias"):
    raise ConversionError(f"{source}: attention_bias=true is not Qwen3 (no bias in q/k/v/o projections)")
  rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
  if rope and rope.get("rope_type", "default") not in ("default", None):
    raise ConversionError(f"{source}: rope scaling {rope!r} is not supported")
  theta = rope.get("rope_theta", hf.get("rope_theta", 1_000_000.0))
  heads = hf["num_attention_heads"]
  bidirectional = (hf.get("is_causal") is False or hf.get("use_bidirectional_attention") is True)
  fields = dict(
      vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
      num_heads=heads, num_kv_heads=hf.get("num_key_value_heads", heads),
      head_dim=hf.get("head_dim") or hf["hidden_size"] // heads, mlp_dim=hf["intermediate_size"],
      rope_theta=float(theta), rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
      max_position_embeddings=int(hf.get("max_position_embeddings", 40_960)),
      # A Qwen3 base checkpoint is causal; pplx-embed turns it bidirectional. We default to the encoder.
      attention="bidirectional" if bidirectional or overrides.get("attention") is None else overrides["attention"],
  )
  fields.update({k: v for k, v in overrides.items() if v is not None})
  return ModelConfig(**fields)


def hf_config_from_model_config(cfg: ModelConfig, dtype: str = "float32") -> dict[str, Any]:
  """A stock transformers Qwen3 config.json; `is_causal: false` makes AutoModel bidirectional without remote code."""
  return {
      "architectures": ["Qwen3Model"],
      "model_type": "qwen3",
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.hidden_size,
      "intermediate_size": cfg.mlp_dim,
      "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.head_dim,
      "hidden_act": "silu",
      "max_position_embeddings": cfg.max_position_embeddings,
      "rms_norm_eps": cfg.rms_norm_eps,
      "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
      "rope_theta": cfg.rope_theta,
      "attention_bias": False,
      "attention_dropout": 0.0,
      "tie_word_embeddings": cfg.tie_embeddings,
      "use_cache": False,
      "is_causal": cfg.causal,
      "use_bidirectional_attention": not cfg.causal,
      "initializer_range": 0.02,
      "dtype": dtype,
  }


# ---------------------------------------------------------------------------------------------------- tensors


def _strip_prefix(tensors: Mapping[str, Any]) -> dict[str, Any]:
  """Qwen3ForCausalLM stores `model.layers...` and `lm_head.weight`; Qwen3Model stores `layers...`."""
  out = {}
  for name, t in tensors.items():
    if name.startswith("model."):
      out[name[len("model."):]] = t
    else:
      out[name] = t
  return out


def params_from_hf(tensors: Mapping[str, np.ndarray], cfg: ModelConfig, source: str = "safetensors"
                   ) -> dict[str, Any]:
  """HF tensors -> nested dict matching `Qwen3`'s nnx state (numpy, stacked over layers)."""
  t = _strip_prefix(tensors)
  used = set()

  def take(name, shape):
    if name not in t:
      raise ConversionError(f"{source}: missing tensor {name!r}")
    arr = np.asarray(t[name])
    if tuple(arr.shape) != tuple(shape):
      raise ConversionError(f"{source}: tensor {name!r} has shape {tuple(arr.shape)}, expected {tuple(shape)} "
                            f"from config")
    used.add(name)
    return arr

  d, n, k, h, f = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
  hf_shapes = {"q_proj": (n * h, d), "k_proj": (k * h, d), "v_proj": (k * h, d), "o_proj": (d, n * h),
               "q_norm": (h,), "k_norm": (h,), "input_layernorm": (d,), "post_attention_layernorm": (d,),
               "gate_proj": (f, d), "up_proj": (f, d), "down_proj": (d, f)}
  params: dict[str, Any] = {"embed_tokens": take("embed_tokens.weight", (cfg.vocab_size, d)),
                            "norm": take("norm.weight", (d,))}
  layers = {}
  for ours, (hf_name, to_jax, _) in LAYER_MAP.items():
    per_layer = [to_jax(take(f"layers.{i}.{hf_name}", hf_shapes[ours]), cfg) for i in range(cfg.num_layers)]
    layers[ours] = np.stack(per_layer)
  params["layers"] = layers
  if cfg.tie_embeddings:
    if "lm_head.weight" in t:  # some tied checkpoints store a copy; it must be the embedding
      head = take("lm_head.weight", (cfg.vocab_size, d))
      if not np.array_equal(head, params["embed_tokens"]):
        raise ConversionError(f"{source}: tie_word_embeddings=true but 'lm_head.weight' differs from "
                              f"'embed_tokens.weight'")
  else:
    params["lm_head"] = take("lm_head.weight", (cfg.vocab_size, d)).T
  unexpected = sorted(set(t) - used - {"rotary_emb.inv_freq"})
  unexpected = [u for u in unexpected if not u.endswith("rotary_emb.inv_freq")]
  if unexpected:
    raise ConversionError(f"{source}: unexpected tensors {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}")
  return params


def params_to_hf(params: Mapping[str, Any], cfg: ModelConfig, prefix: str = "") -> dict[str, np.ndarray]:
  """Nested params (as from `params_from_hf` / an nnx state) -> HF Qwen3Model tensor names (contiguous numpy)."""
  out = {f"{prefix}embed_tokens.weight": np.asarray(params["embed_tokens"]),
         f"{prefix}norm.weight": np.asarray(params["norm"])}
  for ours, (hf_name, _, to_hf) in LAYER_MAP.items():
    stacked = np.asarray(params["layers"][ours])
    for i in range(cfg.num_layers):
      out[f"{prefix}layers.{i}.{hf_name}"] = to_hf(stacked[i], cfg)
  if not cfg.tie_embeddings:
    out["lm_head.weight"] = np.asarray(params["lm_head"]).T
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------------- files


def read_hf_config(folder: str | os.PathLike) -> dict[str, Any]:
  path = Path(folder) / "config.json"
  if not path.is_file():
    raise ConversionError(f"{folder}: no config.json (not a Hugging Face model folder)")
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ConversionError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None


def safetensors_files(folder: str | os.PathLike) -> list[Path]:
  folder = Path(folder)
  index = folder / "model.safetensors.index.json"
  if index.is_file():
    weight_map = json.loads(index.read_text()).get("weight_map", {})
    files = sorted({folder / f for f in weight_map.values()})
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
      raise ConversionError(f"{index}: shard files listed in weight_map are missing: {missing}")
    return files
  single = folder / "model.safetensors"
  if single.is_file():
    return [single]
  raise ConversionError(f"{folder}: no model.safetensors or model.safetensors.index.json")


def read_safetensors(folder: str | os.PathLike) -> tuple[dict[str, np.ndarray], str]:
  """All tensors of a folder as numpy (bfloat16 via ml_dtypes), and the dtype name they were stored in."""
  import ml_dtypes  # noqa: F401  (registers numpy bfloat16)
  from safetensors import safe_open

  tensors: dict[str, np.ndarray] = {}
  dtypes = set()
  for f in safetensors_files(folder):
    with safe_open(str(f), framework="flax") as st:
      for name in st.keys():
        if name in tensors:
          raise ConversionError(f"{f}: tensor {name!r} appears in more than one shard")
        arr = np.asarray(st.get_tensor(name))
        tensors[name] = arr
        dtypes.add(arr.dtype.name)
  dtype = "float32" if not dtypes else sorted(dtypes)[0] if len(dtypes) == 1 else "mixed"
  return tensors, dtype


def write_safetensors(tensors: Mapping[str, np.ndarray], folder: str | os.PathLike,
                      max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> list[str]:
  """model.safetensors, or model-0000i-of-0000n.safetensors + index when above `max_shard_bytes`."""
  from safetensors.numpy import save_file

  folder = Path(folder)
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name in tensors:  # insertion order keeps a layer's tensors together
    nbytes = tensors[name].nbytes
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = tensors[name]
    size += nbytes
  meta = {"format": "pt"}
  if len(shards) == 1:
    save_file(shards[0], str(folder / "model.safetensors"), metadata=meta)
    return ["model.safetensors"]
  names, weight_map = [], {}
  for i, shard in enumerate(shards):
    fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    save_file(shard, str(folder / fname), metadata=meta)
    names.append(fname)
    weight_map.update({k: fname for k in shard})
  total = sum(t.nbytes for t in tensors.values())
  (folder / "model.safetensors.index.json").write_text(
      json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
  return names + ["model.safetensors.index.json"]
