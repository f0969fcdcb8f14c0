"""Hugging Face <-> pplx-jax for the decoder families (Qwen3, Llama, Qwen2): a declarative name map, config
translation and safetensors I/O.

Transforms are exact (transposes and reshapes only), so HF -> pplx-jax -> HF reproduces every tensor bit for bit.
Exports are stock transformers folders (`Qwen3Model`, `LlamaModel`, `Qwen2Model`) made bidirectional by
`"is_causal": false`, which transformers >= 5 honours for all three: no remote code.

Encoder-only checkpoints (`tie_word_embeddings: false` and no `lm_head.weight`, what `Qwen3Config()` defaults and
embedding models ship) import as `lm_head=False` and export the same way.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from pplx_jax.core.errors import UserError
from pplx_jax.core.model_config import ModelConfig
from pplx_jax.models.encoder import layer_param_names

# model_type -> (family, architectures read as that family)
FAMILIES = {
    "qwen3": ("qwen3", ("Qwen3ForCausalLM", "Qwen3Model", "Qwen3ForSequenceClassification")),
    "bidirectional_pplx_qwen3": ("qwen3", ("PPLXQwen3Model", "PPLXQwen3ContextualModel")),
    "llama": ("llama", ("LlamaForCausalLM", "LlamaModel")),
    "qwen2": ("qwen2", ("Qwen2ForCausalLM", "Qwen2Model")),
}
SUPPORTED_ARCHITECTURES = tuple(a for _, archs in FAMILIES.values() for a in archs)
SUPPORTED_MODEL_TYPES = tuple(FAMILIES)
EXPORT = {"qwen3": ("qwen3", "Qwen3Model"), "llama": ("llama", "LlamaModel"), "qwen2": ("qwen2", "Qwen2Model")}
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
    "q_bias": ("self_attn.q_proj.bias", lambda w, c: w.reshape(c.num_heads, c.head_dim), lambda w, c: w.reshape(-1)),
    "k_bias": ("self_attn.k_proj.bias", lambda w, c: w.reshape(c.num_kv_heads, c.head_dim),
               lambda w, c: w.reshape(-1)),
    "v_bias": ("self_attn.v_proj.bias", lambda w, c: w.reshape(c.num_kv_heads, c.head_dim),
               lambda w, c: w.reshape(-1)),
    "o_bias": ("self_attn.o_proj.bias", lambda w, c: w, lambda w, c: w),
}


class ConversionError(UserError):
  pass


# ---------------------------------------------------------------------------------------------------- config


def _rope_fields(hf: Mapping[str, Any], source: str) -> dict[str, Any]:
  """rope_theta and scaling from transformers 5's `rope_parameters` or the v4 `rope_scaling` + `rope_theta`."""
  rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
  kind = rope.get("rope_type", rope.get("type")) or "default"
  # transformers' default theta (RotaryEmbeddingConfigMixin.default_theta) when a config names none
  out = {"rope_theta": float(rope.get("rope_theta", hf.get("rope_theta", 10_000.0))), "rope_type": kind}
  original = int(rope.get("original_max_position_embeddings", hf.get("max_position_embeddings", 8192)))
  if kind == "default":
    return out
  if kind == "linear":
    return out | {"rope_factor": float(rope["factor"])}
  if kind == "llama3":
    try:
      return out | {"rope_factor": float(rope["factor"]), "rope_low_freq_factor": float(rope["low_freq_factor"]),
                    "rope_high_freq_factor": float(rope["high_freq_factor"]), "rope_original_max_positions": original}
    except KeyError as e:
      raise ConversionError(f"{source}: rope_parameters of rope_type 'llama3' has no {e.args[0]!r}") from None
  raise ConversionError(f"{source}: rope_parameters.rope_type={kind!r} is not supported (pplx-jax: default, linear, "
                        "llama3)")


def model_config_from_hf(hf: Mapping[str, Any], source: str = "config.json", tensor_names=None,
                         **overrides) -> ModelConfig:
  """A `ModelConfig` from a transformers config.json. `tensor_names` (the checkpoint's tensors) tells an encoder-only
  checkpoint (untied, no lm_head.weight) from an untied one with a head; without it an untied config has a head."""
  archs = hf.get("architectures") or []
  model_type = hf.get("model_type")
  if model_type not in FAMILIES or (archs and not any(a in FAMILIES[model_type][1] for a in archs)):
    raise ConversionError(f"{source}: unsupported architecture {archs or model_type!r} (model_type={model_type!r}); "
                          f"pplx-jax converts {SUPPORTED_ARCHITECTURES}")
  family = FAMILIES[model_type][0]
  for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
    if key not in hf:
      raise ConversionError(f"{source}: missing key {key!r}")
  if hf.get("hidden_act", "silu") != "silu":
    raise ConversionError(f"{source}: hidden_act={hf['hidden_act']!r} is not supported (pplx-jax: silu)")
  if hf.get("mlp_bias"):
    raise ConversionError(f"{source}: mlp_bias=true is not supported (pplx-jax: no MLP biases)")
  if hf.get("use_sliding_window"):
    raise ConversionError(f"{source}: use_sliding_window=true is not supported (pplx-jax: full attention)")
  if family == "qwen2":
    qk_norm, qkv_bias, o_bias = False, True, False  # Qwen2Attention hard-codes q/k/v biases
  else:
    bias = bool(hf.get("attention_bias", False))
    qk_norm, qkv_bias, o_bias = family == "qwen3", bias, bias
  heads = hf["num_attention_heads"]
  tied = bool(hf.get("tie_word_embeddings", False))
  has_head = tied or tensor_names is None or any(n in ("lm_head.weight", "model.lm_head.weight")
                                                 for n in tensor_names)
  bidirectional = (hf.get("is_causal") is False or hf.get("use_bidirectional_attention") is True)
  fields = dict(
      vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
      num_heads=heads, num_kv_heads=hf.get("num_key_value_heads") or heads,
      head_dim=hf.get("head_dim") or hf["hidden_size"] // heads, mlp_dim=hf["intermediate_size"],
      rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)), tie_embeddings=tied, lm_head=has_head,
      max_position_embeddings=int(hf.get("max_position_embeddings", 40_960)),
      family=family, qk_norm=qk_norm, qkv_bias=qkv_bias, o_bias=o_bias, **_rope_fields(hf, source),
      # A base decoder is causal; pplx-embed turns it bidirectional. We default to the encoder.
      attention="bidirectional" if bidirectional or overrides.get("attention") is None else overrides["attention"],
  )
  fields.update({k: v for k, v in overrides.items() if v is not None})
  return ModelConfig(**fields)


def _rope_parameters(cfg: ModelConfig) -> dict[str, Any]:
  rope = {"rope_type": cfg.rope_type, "rope_theta": cfg.rope_theta}
  if cfg.rope_type == "linear":
    rope["factor"] = cfg.rope_factor
  elif cfg.rope_type == "llama3":
    rope.update(factor=cfg.rope_factor, low_freq_factor=cfg.rope_low_freq_factor,
                high_freq_factor=cfg.rope_high_freq_factor,
                original_max_position_embeddings=cfg.rope_original_max_positions)
  return rope


def hf_config_from_model_config(cfg: ModelConfig, dtype: str = "float32") -> dict[str, Any]:
  """A stock transformers config.json of the model's family; `is_causal: false` makes AutoModel bidirectional
  without remote code."""
  model_type, arch = EXPORT[cfg.family]
  wanted = {"qwen3": (True, cfg.qkv_bias, cfg.qkv_bias), "llama": (False, cfg.qkv_bias, cfg.qkv_bias),
            "qwen2": (False, True, False)}[cfg.family]
  if (cfg.qk_norm, cfg.qkv_bias, cfg.o_bias) != wanted:
    raise ConversionError(f"model.family={cfg.family!r} cannot hold qk_norm={cfg.qk_norm}, qkv_bias={cfg.qkv_bias}, "
                          f"o_bias={cfg.o_bias} ({arch} has qk_norm={wanted[0]}, q/k/v bias={wanted[1]}, "
                          f"o bias={wanted[2]}); no stock transformers class computes this model")
  out = {
      "architectures": [arch],
      "model_type": model_type,
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
      "rope_parameters": _rope_parameters(cfg),
      "rope_theta": cfg.rope_theta,
      "attention_bias": cfg.qkv_bias,
      "attention_dropout": 0.0,
      "tie_word_embeddings": cfg.tie_embeddings,
      "use_cache": False,
      "is_causal": cfg.causal,
      "use_bidirectional_attention": not cfg.causal,
      "initializer_range": 0.02,
      "dtype": dtype,
  }
  if cfg.family == "llama":
    out["mlp_bias"] = False
  if cfg.family == "qwen2":
    del out["attention_bias"]
    out.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.num_layers)
  return out


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
  """HF tensors -> nested dict matching the `Encoder`'s nnx state (numpy, stacked over layers)."""
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
               "gate_proj": (f, d), "up_proj": (f, d), "down_proj": (d, f),
               "q_bias": (n * h,), "k_bias": (k * h,), "v_bias": (k * h,), "o_bias": (d,)}
  params: dict[str, Any] = {"embed_tokens": take("embed_tokens.weight", (cfg.vocab_size, d)),
                            "norm": take("norm.weight", (d,))}
  layers = {}
  for ours in layer_param_names(cfg):
    hf_name, to_jax, _ = LAYER_MAP[ours]
    per_layer = [to_jax(take(f"layers.{i}.{hf_name}", hf_shapes[ours]), cfg) for i in range(cfg.num_layers)]
    layers[ours] = np.stack(per_layer)
  params["layers"] = layers
  if cfg.tie_embeddings:
    if "lm_head.weight" in t:  # some tied checkpoints store a copy; it must be the embedding
      head = take("lm_head.weight", (cfg.vocab_size, d))
      if not np.array_equal(head, params["embed_tokens"]):
        raise ConversionError(f"{source}: tie_word_embeddings=true but 'lm_head.weight' differs from "
                              f"'embed_tokens.weight'")
  elif cfg.lm_head:
    params["lm_head"] = take("lm_head.weight", (cfg.vocab_size, d)).T
  unexpected = sorted(set(t) - used - {"rotary_emb.inv_freq"})
  unexpected = [u for u in unexpected if not u.endswith("rotary_emb.inv_freq")]
  if unexpected:
    raise ConversionError(f"{source}: unexpected tensors {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}")
  return params


def params_to_hf(params: Mapping[str, Any], cfg: ModelConfig, prefix: str = "") -> dict[str, np.ndarray]:
  """Nested params (as from `params_from_hf` / an nnx state) -> HF base-model tensor names (contiguous numpy)."""
  out = {f"{prefix}embed_tokens.weight": np.asarray(params["embed_tokens"]),
         f"{prefix}norm.weight": np.asarray(params["norm"])}
  for ours in layer_param_names(cfg):
    hf_name, _, to_hf = LAYER_MAP[ours]
    stacked = np.asarray(params["layers"][ours])
    for i in range(cfg.num_layers):
      out[f"{prefix}layers.{i}.{hf_name}"] = to_hf(stacked[i], cfg)
  if cfg.has_untied_head:
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


def tensor_names(folder: str | os.PathLike) -> list[str]:
  """Tensor names of a folder's safetensors, from the headers only (no weights are read)."""
  from safetensors import safe_open

  names = []
  for f in safetensors_files(folder):
    with safe_open(str(f), framework="numpy") as st:
      names.extend(st.keys())
  return names


def folder_model_config(folder: str | os.PathLike, **overrides) -> ModelConfig:
  """The `ModelConfig` of a Hugging Face folder: its config.json, and its tensor names for the LM head."""
  folder = Path(folder)
  return model_config_from_hf(read_hf_config(folder), source=str(folder / "config.json"),
                              tensor_names=tensor_names(folder), **overrides)


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
