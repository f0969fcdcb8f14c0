"""GGUF (llama.cpp) -> Hugging Face: config, dequantised tensors and tokenizer from one `.gguf` file.

A GGUF file has no `config.json`, no `tokenizer.json` and no float weights: its metadata is the config (under
llama.cpp's key names), its tokenizer is a vocabulary and merge table in the metadata, and its weights are ggml
blocks. `read_gguf` turns the three into what a Hugging Face folder holds, and `write_hf_folder` writes that folder;
the rest of pplx-jax then imports it like any other (GGUF -> HF tensors -> `convert.hf`), so no stage knows GGUF.

Reference behaviour is transformers' own GGUF loading (`from_pretrained(dir, gguf_file=...)`, the legacy path in
`modeling_gguf_pytorch_utils.load_gguf_checkpoint` for llama / qwen2 / qwen3): the same dequantiser (gguf-py), the
same undoing of llama.cpp's q/k row permutation, the same tie rule (no `output.weight` => tied), and a tokenizer
that tokenizes as `integrations/gguf/gguf_tokenizer_mapping.py` builds it. Where the file says more than
transformers reads (a llama3 `rope_freqs.weight`, rope scaling keys) the config says it too.

Memory: the file is memory-mapped by gguf-py; `GGUFModel.tensors` dequantises one tensor per access and caches
nothing, and `write_hf_folder` streams them into safetensors one at a time, so a conversion holds the mapped file
plus one float tensor, never a second copy of the model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pplx_jax.convert.hf import ConversionError
from pplx_jax.core.tokenizers import bytes_to_unicode  # noqa: F401 (also this module's API)

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
# Every type below is checked against an independent NumPy reference in tests/test_gguf.py.
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
TOKENIZER_MODELS = ("gpt2", "llama")
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3  # transformers' default max_shard_size ("5GB")

# GGUF leaf -> Hugging Face leaf under model.layers.{i}.
LAYER_TENSORS = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_BASE_LAYER = ("attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
               "ffn_norm.weight", "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight")
# Which optional layer tensors each architecture has: exactly these, no more, no fewer.
ARCH_EXTRA_LAYER = {"llama": (), "qwen2": ("attn_q.bias", "attn_k.bias", "attn_v.bias"),
                    "qwen3": ("attn_q_norm.weight", "attn_k_norm.weight")}
_GLOBAL_TENSORS = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                   "output.weight": "lm_head.weight"}
_LAYER_RE = re.compile(r"blk\.(\d+)\.(.+)")

# Pre-tokenizer splits for byte-level vocabularies, by `tokenizer.ggml.pre`: the table transformers 5.24 applies
# (gguf_tokenizer_mapping.GGUF_PRE_TOKENIZER_SPLITS). Any other value gets GPT-2's ByteLevel regex, as there.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN35_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
                 r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_TEKKEN_SPLIT = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
                 r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
                 r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT4O_SPLIT = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
                r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
                r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
                r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
                r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZER_SPLITS = {
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
                     "jina-v5-nano", "dbrx", "smaug-bpe"), _LLAMA3_SPLIT),
    "tekken": _TEKKEN_SPLIT,
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"), _QWEN2_SPLIT),
    "qwen35": _QWEN35_SPLIT,
    **dict.fromkeys(("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), _GPT4O_SPLIT),
}
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types
_SPECIAL_IDS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "unk_token": "unknown_token_id",
                "pad_token": "padding_token_id"}
_BIG_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.scores",
               "tokenizer.ggml.token_type")


class GGUFError(ConversionError):
  pass


# ---------------------------------------------------------------------------------------------------- tensors


@dataclasses.dataclass(frozen=True)
class _Entry:
  gguf_name: str
  ggml_type: str
  shape: tuple[int, ...]  # numpy (Hugging Face) order
  data: np.ndarray  # the memory-mapped bytes (or values) gguf-py hands out
  permute_heads: int | None  # undo llama.cpp's q/k row permutation over this many heads


def undo_llama_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Inverse of llama.cpp's `LlamaModel.permute` (convert_hf_to_gguf.py).

  llama.cpp reorders each head's q/k rows from rotate-half order (first half, second half) to interleaved pairs
  for its GPT-J style RoPE: rows [n, 2, d/2] -> [n, d/2, 2]. This swaps them back, as transformers'
  `LlamaTensorProcessor._reverse_permute_weights` does.
  """
  half = w.shape[0] // n_heads // 2
  return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def dequantize(data: np.ndarray, ggml_type: str) -> np.ndarray:
  """Float32 values of one tensor's data as gguf-py's reader hands it out (an owned copy, never a view)."""
  from gguf import GGMLQuantizationType
  from gguf.quants import dequantize as gguf_dequantize

  out = gguf_dequantize(data, GGMLQuantizationType[ggml_type])
  return np.array(out, dtype=np.float32, copy=True) if ggml_type == "F32" else out.astype(np.float32, copy=False)


class GGUFTensors(Mapping[str, np.ndarray]):
  """A file's tensors under Hugging Face names, dequantised to float32 on each access (nothing is cached)."""

  def __init__(self, entries: Mapping[str, _Entry], path: Path):
    self._entries = dict(entries)
    self._path = path

  def __getitem__(self, name: str) -> np.ndarray:
    e = self._entries[name]
    w = dequantize(e.data, e.ggml_type)
    if w.shape != e.shape:
      if w.size != math.prod(e.shape):
        raise GGUFError(f"{self._path}: tensor {e.gguf_name!r} dequantised to {w.size} values, its shape "
                        f"{e.shape} needs {math.prod(e.shape)}")
      w = w.reshape(e.shape)
    if e.permute_heads:
      w = undo_llama_permute(w, e.permute_heads)
    return np.ascontiguousarray(w)

  def __iter__(self) -> Iterator[str]:
    return iter(self._entries)

  def __len__(self) -> int:
    return len(self._entries)

  def shape(self, name: str) -> tuple[int, ...]:
    return self._entries[name].shape

  def ggml_type(self, name: str) -> str:
    return self._entries[name].ggml_type

  def gguf_name(self, name: str) -> str:
    return self._entries[name].gguf_name


# ---------------------------------------------------------------------------------------------------- model


@dataclasses.dataclass(frozen=True)
class TokenizerSpec:
  """The `tokenizer.ggml.*` metadata a tokenizer is built from."""
  model: str  # tokenizer.ggml.model: "gpt2" (byte-level BPE) or "llama" (SentencePiece BPE)
  pre: str | None  # tokenizer.ggml.pre: which pre-tokenizer split a byte-level vocabulary was trained with
  tokens: list[str]
  token_types: list[int]
  merges: list[str]
  scores: list[float]


@dataclasses.dataclass
class GGUFModel:
  path: Path
  architecture: str  # general.architecture
  config: dict[str, Any]  # a Hugging Face config.json
  tensors: GGUFTensors
  metadata: dict[str, Any]  # every key but the tokenizer's big arrays
  tokenizer_config: dict[str, Any]  # tokenizer_config.json
  tokenizer_spec: TokenizerSpec = dataclasses.field(repr=False)
  gguf_types: dict[str, str] = dataclasses.field(repr=False)  # every tensor in the file -> its ggml type

  def tokenizer(self):
    """The `tokenizers.Tokenizer` the metadata describes (built on each call)."""
    return _build_tokenizer(self.tokenizer_spec, self.tokenizer_config, self.path)


def read_gguf(path: str | os.PathLike) -> GGUFModel:
  """Open a GGUF file and check everything that can be checked without dequantising: the architecture, every
  tensor's name, type and shape, the tokenizer model. Tensors are read when `GGUFModel.tensors` is indexed."""
  from gguf import GGUFReader

  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such GGUF file")
  try:
    reader = GGUFReader(str(path))
  except (ValueError, OSError) as e:
    raise GGUFError(f"{path}: not a readable GGUF file ({e})") from None
  metadata = {k: _field_value(f) for k, f in reader.fields.items() if k not in _BIG_ARRAYS}
  if int(metadata.get("split.count", 1)) > 1:
    raise GGUFError(f"{path}: split.count={metadata['split.count']}: one part of a split GGUF; merge the parts "
                    f"first (llama.cpp's gguf-split --merge)")
  arch = metadata.get("general.architecture")
  if arch not in ARCHITECTURES:
    raise GGUFError(f"{path}: general.architecture={arch!r} is not supported; pplx-jax reads "
                    f"{sorted(ARCHITECTURES)}")
  raw = {t.name: t for t in reader.tensors}
  config = _hf_config(metadata, raw, path)
  entries = _tensor_entries(raw, config, arch, path)
  spec = _tokenizer_spec(metadata, {k: reader.fields[k].contents() for k in _BIG_ARRAYS if k in reader.fields}, path)
  return GGUFModel(path, arch, config, GGUFTensors(entries, path), metadata, _tokenizer_config(metadata, spec, path),
                   spec, {name: t.tensor_type.name for name, t in raw.items()})


def _field_value(field) -> Any:
  value = field.contents()
  return value.item() if isinstance(value, np.generic) else value


def _meta(metadata: Mapping[str, Any], key: str, path: Path, default: Any = ...) -> Any:
  if key in metadata:
    return metadata[key]
  if default is ...:
    raise GGUFError(f"{path}: missing metadata key {key!r}")
  return default


# ---------------------------------------------------------------------------------------------------- config


def _hf_config(metadata: Mapping[str, Any], raw: Mapping[str, Any], path: Path) -> dict[str, Any]:
  arch = metadata["general.architecture"]
  key = lambda name, default=...: _meta(metadata, f"{arch}.{name}", path, default)
  if key("expert_count", 0):
    raise GGUFError(f"{path}: {arch}.expert_count={key('expert_count')} (mixture of experts) is not supported")
  hidden, heads = int(key("embedding_length")), int(key("attention.head_count"))
  kv_heads = key("attention.head_count_kv", heads)
  if isinstance(kv_heads, list):
    if len(set(kv_heads)) != 1:
      raise GGUFError(f"{path}: {arch}.attention.head_count_kv varies by layer ({kv_heads}); not supported")
    kv_heads = kv_heads[0]
  head_dim = int(key("attention.key_length", 0) or key("rope.dimension_count", 0) or hidden // heads)
  for name in ("attention.value_length", "rope.dimension_count"):
    if key(name, head_dim) != head_dim:
      raise GGUFError(f"{path}: {arch}.{name}={key(name)} differs from the head dim {head_dim} "
                      f"(partial rotary / unequal key and value heads are not supported)")
  if "token_embd.weight" not in raw:
    raise GGUFError(f"{path}: missing tensor 'token_embd.weight'")
  vocab_size = int(raw["token_embd.weight"].shape[1])  # ggml order: [hidden, vocab]
  theta = float(key("rope.freq_base", 10_000.0))  # llama.cpp's default base
  config: dict[str, Any] = {
      "architectures": [ARCHITECTURES[arch]],
      "model_type": arch,
      "vocab_size": vocab_size,
      "hidden_size": hidden,
      "intermediate_size": int(key("feed_forward_length")),
      "num_hidden_layers": int(key("block_count")),
      "num_attention_heads": heads,
      "num_key_value_heads": int(kv_heads),
      "head_dim": head_dim,
      "hidden_act": "silu",
      "max_position_embeddings": int(key("context_length")),
      "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon")),
      "rope_parameters": _rope_parameters(metadata, raw, theta, head_dim, path),
      # llama.cpp writes the output projection only when it is not the embedding (transformers' rule too)
      "tie_word_embeddings": "output.weight" not in raw,
      "attention_dropout": 0.0,
      "initializer_range": 0.02,
      "use_cache": True,
  }
  if arch in ("llama", "qwen3"):
    config["attention_bias"] = False
  if arch == "llama":
    config.update(mlp_bias=False, pretraining_tp=1)
  if arch == "qwen2":
    del config["head_dim"]  # Qwen2Config derives it; q/k/v always carry a bias there
    if head_dim != hidden // heads:
      raise GGUFError(f"{path}: qwen2 head dim {head_dim} != hidden/heads {hidden // heads}")
  if arch in ("qwen2", "qwen3"):
    config.update(use_sliding_window=False, sliding_window=None, max_window_layers=config["num_hidden_layers"])
  for name, gguf_key in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                         ("pad_token_id", "padding_token_id")):
    if f"tokenizer.ggml.{gguf_key}" in metadata:
      config[name] = int(metadata[f"tokenizer.ggml.{gguf_key}"])
  return config


def _rope_parameters(metadata, raw, theta: float, head_dim: int, path: Path) -> dict[str, Any]:
  arch = metadata["general.architecture"]
  scaling = str(metadata.get(f"{arch}.rope.scaling.type", "none")).lower()
  factor = metadata.get(f"{arch}.rope.scaling.factor", metadata.get(f"{arch}.rope.scale_linear"))
  if "rope_freqs.weight" in raw:
    if scaling != "none":
      raise GGUFError(f"{path}: both 'rope_freqs.weight' and {arch}.rope.scaling.type={scaling!r}")
    return _llama3_rope_from_freqs(raw["rope_freqs.weight"], theta, head_dim, path)
  if scaling == "none" and factor is not None and float(factor) != 1.0:
    scaling = "linear"  # older files: rope.scale_linear alone
  if scaling == "none":
    return {"rope_type": "default", "rope_theta": theta}
  if factor is None:
    raise GGUFError(f"{path}: {arch}.rope.scaling.type={scaling!r} without {arch}.rope.scaling.factor")
  if scaling == "linear":
    return {"rope_type": "linear", "factor": float(factor), "rope_theta": theta}
  if scaling == "yarn":
    out = {"rope_type": "yarn", "factor": float(factor), "rope_theta": theta}
    if f"{arch}.rope.scaling.original_context_length" in metadata:
      out["original_max_position_embeddings"] = int(metadata[f"{arch}.rope.scaling.original_context_length"])
    for gguf_key, hf_key in (("yarn_beta_fast", "beta_fast"), ("yarn_beta_slow", "beta_slow")):
      if f"{arch}.rope.scaling.{gguf_key}" in metadata:
        out[hf_key] = float(metadata[f"{arch}.rope.scaling.{gguf_key}"])
    # llama.cpp multiplies its own mscale by attn_factor where transformers' attention_factor replaces it
    for gguf_key in ("attn_factor", "yarn_log_multiplier", "yarn_ext_factor", "yarn_attn_factor"):
      if f"{arch}.rope.scaling.{gguf_key}" in metadata:
        raise GGUFError(f"{path}: {arch}.rope.scaling.{gguf_key} has no Hugging Face equivalent here")
    return out
  raise GGUFError(f"{path}: {arch}.rope.scaling.type={scaling!r} is not supported (none, linear, yarn)")


def llama3_rope_factors(theta: float, head_dim: int, factor: float, low_freq_factor: float,
                        high_freq_factor: float, original_max_position_embeddings: int) -> np.ndarray:
  """The per-frequency divisors llama.cpp stores as `rope_freqs.weight` for a `rope_type: llama3` config
  (convert_hf_to_gguf.py `LlamaModel.generate_extra_tensors`); transformers' `_compute_llama3_parameters` divides
  the default inverse frequencies by exactly these."""
  freqs = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
  wavelen = 2 * math.pi / freqs.astype(np.float64)
  low_wavelen = original_max_position_embeddings / low_freq_factor
  high_wavelen = original_max_position_embeddings / high_freq_factor
  smooth = (original_max_position_embeddings / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
  mid = 1.0 / ((1 - smooth) / factor + smooth)
  return np.where(wavelen < high_wavelen, 1.0, np.where(wavelen > low_wavelen, factor, mid))


def _llama3_rope_from_freqs(tensor, theta: float, head_dim: int, path: Path) -> dict[str, Any]:
  """Llama 3.x GGUFs carry their rope scaling only as the divisors; recover the config that produces them.

  Only the ratios old_ctx/low and old_ctx/high shape the divisors, so original_max_position_embeddings is fixed at
  8192 (Llama 3's value and llama.cpp's default) and the two factors solved from the smoothly scaled frequencies;
  the result is checked by recomputing every divisor.
  """
  name = "rope_freqs.weight"
  r = dequantize(tensor.data, tensor.tensor_type.name).reshape(-1).astype(np.float64)
  if r.size != head_dim // 2:
    raise GGUFError(f"{path}: tensor {name!r} has {r.size} values, expected head_dim/2 = {head_dim // 2}")
  if np.allclose(r, 1.0):
    return {"rope_type": "default", "rope_theta": theta}
  factor = float(np.float32(r.max()))
  old = 8192
  freqs = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
  wavelen = 2 * math.pi / freqs.astype(np.float64)
  mid = (r > 1 + 1e-6) & (r < factor * (1 - 1e-6))
  candidates = [(1.0, 4.0)]  # Llama 3.1 / 3.2 / 3.3
  if mid.sum() >= 2:  # smooth = old/((h-l) wavelen) - l/(h-l), linear in 1/wavelen
    smooth = (1 / r[mid] - 1 / factor) / (1 - 1 / factor)
    slope, intercept = np.polyfit(1 / wavelen[mid], smooth, 1)
    span = old / slope
    candidates.insert(0, (round(-intercept * span, 4), round(-intercept * span + span, 4)))
  for low, high in candidates:
    if high > low > 0 and np.allclose(llama3_rope_factors(theta, head_dim, factor, low, high, old), r, rtol=1e-5):
      return {"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
              "original_max_position_embeddings": old, "rope_theta": theta}
  raise GGUFError(f"{path}: tensor {name!r} is not a llama3 rope scaling (no factor/low/high fits its values)")


def _tensor_entries(raw: Mapping[str, Any], config: Mapping[str, Any], arch: str, path: Path) -> dict[str, _Entry]:
  layers = config["num_hidden_layers"]
  d, n, kv, f = (config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"],
                 config["intermediate_size"])
  hd = config.get("head_dim", d // n)
  v = config["vocab_size"]
  shapes = {"attn_norm.weight": (d,), "ffn_norm.weight": (d,), "attn_q.weight": (n * hd, d),
            "attn_k.weight": (kv * hd, d), "attn_v.weight": (kv * hd, d), "attn_output.weight": (d, n * hd),
            "attn_q.bias": (n * hd,), "attn_k.bias": (kv * hd,), "attn_v.bias": (kv * hd,),
            "attn_q_norm.weight": (hd,), "attn_k_norm.weight": (hd,), "ffn_gate.weight": (f, d),
            "ffn_up.weight": (f, d), "ffn_down.weight": (d, f)}
  global_shapes = {"token_embd.weight": (v, d), "output_norm.weight": (d,), "output.weight": (v, d)}
  layer_leaves = _BASE_LAYER + ARCH_EXTRA_LAYER[arch]
  expected = {name: (hf, global_shapes[name]) for name, hf in _GLOBAL_TENSORS.items()
              if name != "output.weight" or not config["tie_word_embeddings"]}
  for i in range(layers):
    for leaf in layer_leaves:
      expected[f"blk.{i}.{leaf}"] = (f"model.layers.{i}.{LAYER_TENSORS[leaf]}", shapes[leaf])
  unexpected = [name for name in raw if name not in expected and name != "rope_freqs.weight"]
  if unexpected:
    raise GGUFError(f"{path}: tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''} are not part of a "
                    f"{arch} model as pplx-jax reads it ({len(unexpected)} unexpected)")
  missing = [name for name in expected if name not in raw]
  if missing:
    raise GGUFError(f"{path}: missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
  entries = {}
  for gguf_name, (hf_name, shape) in expected.items():
    t = raw[gguf_name]
    kind = t.tensor_type.name
    if kind not in SUPPORTED_TYPES:
      raise GGUFError(f"{path}: tensor {gguf_name!r} is stored as ggml type {kind}; supported: {SUPPORTED_TYPES}")
    got = tuple(int(x) for x in reversed(t.shape.tolist()))
    if got != shape:
      raise GGUFError(f"{path}: tensor {gguf_name!r} has shape {got}, expected {shape} from the metadata")
    permute = None
    if arch == "llama" and (".attn_q." in gguf_name or ".attn_k." in gguf_name):
      permute = n if ".attn_q." in gguf_name else kv
    entries[hf_name] = _Entry(gguf_name, kind, shape, t.data, permute)
  return entries


# ---------------------------------------------------------------------------------------------------- tokenizer


def _tokenizer_spec(metadata: Mapping[str, Any], arrays: Mapping[str, Any], path: Path) -> TokenizerSpec:
  model = metadata.get("tokenizer.ggml.model")
  if model is None:
    raise GGUFError(f"{path}: no tokenizer (missing metadata key 'tokenizer.ggml.model')")
  if model not in TOKENIZER_MODELS:
    raise GGUFError(f"{path}: tokenizer.ggml.model={model!r} is not supported; pplx-jax builds {TOKENIZER_MODELS}")
  tokens = arrays.get("tokenizer.ggml.tokens")
  if not tokens:
    raise GGUFError(f"{path}: missing metadata key 'tokenizer.ggml.tokens'")
  merges, scores = arrays.get("tokenizer.ggml.merges") or [], arrays.get("tokenizer.ggml.scores") or []
  types = arrays.get("tokenizer.ggml.token_type") or []
  if model == "gpt2" and not merges:
    raise GGUFError(f"{path}: a byte-level (gpt2) tokenizer without 'tokenizer.ggml.merges'")
  if model == "llama" and not merges and len(scores) != len(tokens):
    raise GGUFError(f"{path}: a SentencePiece (llama) tokenizer without 'tokenizer.ggml.merges' needs one "
                    f"'tokenizer.ggml.scores' entry per token ({len(tokens)}), got {len(scores)}")
  if types and len(types) != len(tokens):
    raise GGUFError(f"{path}: tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens")
  bad = next((m for m in merges if len(m.split(" ")) != 2), None)
  if bad is not None:
    raise GGUFError(f"{path}: tokenizer.ggml.merges holds {bad!r}, not two space-separated pieces")
  return TokenizerSpec(model, metadata.get("tokenizer.ggml.pre"), list(tokens), list(types), list(merges),
                       list(scores))


def _tokenizer_config(metadata: Mapping[str, Any], spec: TokenizerSpec, path: Path) -> dict[str, Any]:
  tokens = spec.tokens
  out: dict[str, Any] = {"tokenizer_class": "TokenizersBackend"}
  for name, key in _SPECIAL_IDS.items():
    token_id = metadata.get(f"tokenizer.ggml.{key}")
    if token_id is not None and not 0 <= token_id < len(tokens):
      raise GGUFError(f"{path}: tokenizer.ggml.{key}={token_id} is outside the vocabulary of {len(tokens)}")
    out[name] = tokens[token_id] if token_id is not None else None
  # llama.cpp adds BOS to a SentencePiece vocabulary that does not say otherwise (transformers follows it)
  out["add_bos_token"] = bool(metadata.get("tokenizer.ggml.add_bos_token", spec.model == "llama"))
  out["add_eos_token"] = bool(metadata.get("tokenizer.ggml.add_eos_token", False))
  if "tokenizer.chat_template" in metadata:
    out["chat_template"] = metadata["tokenizer.chat_template"]
  out["model_max_length"] = int(metadata.get(f"{metadata['general.architecture']}.context_length", 0)) or None
  out["clean_up_tokenization_spaces"] = False
  return out


def merges_from_scores(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
  """SentencePiece files list no merges: every split of a token into two vocabulary pieces is a merge, ranked by
  the merged token's score (best first; longer left, then right piece first on ties), as transformers'
  `generate_merges` ranks them."""
  vocab = {t: i for i, t in enumerate(tokens)}
  ranked = []
  for token, score in dict(zip(tokens, scores)).items():
    local = [(token[:k], token[k:], score) for k in range(1, len(token)) if token[:k] in vocab and token[k:] in vocab]
    ranked.extend(sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]])))
  ranked.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
  return [(a, b) for a, b, _ in ranked]


def _build_tokenizer(spec: TokenizerSpec, tok_config: Mapping[str, Any], path: Path):
  from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
  from tokenizers.models import BPE

  tokens, types = spec.tokens, spec.token_types
  merges = [tuple(m.split(" ")) for m in spec.merges]
  if spec.model == "gpt2":
    spelling = bytes_to_unicode()
    alphabet = set(spelling.values())
    # llama.cpp stores added tokens unspelled; transformers respells them, so their ids stay where the file says
    vocab = {t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8")): i
             for i, t in enumerate(tokens)}
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                        end_of_word_suffix="", fuse_unk=False))
    split = PRE_TOKENIZER_SPLITS.get(spec.pre)
    if split is None:
      tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
      tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                                   pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    # a control token outside the byte alphabet is a llama.cpp mislabel; transformers leaves it unmatched
    control_ok = lambda t: set(t) <= alphabet
  else:
    vocab = {t: i for i, t in enumerate(tokens)}
    if not merges:
      merges = merges_from_scores(tokens, spec.scores)
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, fuse_unk=True, byte_fallback=True, dropout=None))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(content=" ", left=1, right=0)])
    control_ok = lambda t: True
  special = [t for t, k in zip(tokens, types) if k == _CONTROL and control_ok(t)]
  tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in special])
  known = tok.get_vocab()
  user = [t for t, k in zip(tokens, types) if k == _USER_DEFINED and t in known]
  tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in user])
  added = set(special) | set(user)
  named = [tok_config[n] for n in _SPECIAL_IDS if tok_config.get(n) is not None]
  tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in dict.fromkeys(named)
                          if t not in added])
  tok.post_processor = _post_processor(tok, tok_config, processors)
  return tok


def _post_processor(tok, tok_config: Mapping[str, Any], processors):
  """The TemplateProcessing transformers' `TokenizersBackend.update_post_processor` installs."""
  bos, eos = tok_config.get("bos_token"), tok_config.get("eos_token")
  add_bos = bool(tok_config.get("add_bos_token")) and bos is not None
  add_eos = bool(tok_config.get("add_eos_token")) and eos is not None
  single = f"{bos + ':0 ' if add_bos else ''}$A:0{' ' + eos + ':0' if add_eos else ''}"
  pair = f"{single}{' ' + bos + ':1' if add_bos else ''} $B:1{' ' + eos + ':1' if add_eos else ''}"
  special = ([(bos, tok.token_to_id(bos))] if add_bos else []) + ([(eos, tok.token_to_id(eos))] if add_eos else [])
  return processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)


# ---------------------------------------------------------------------------------------------------- writing


_ST_DTYPES = {"float32": ("F32", 4), "float16": ("F16", 2), "bfloat16": ("BF16", 2)}


def _cast(arr: np.ndarray, dtype: str) -> np.ndarray:
  if dtype == "bfloat16":
    import ml_dtypes
    return arr.astype(ml_dtypes.bfloat16)
  return arr.astype(np.dtype(dtype), copy=False)


def write_safetensors_streaming(path: Path, names: list[str], shapes: Mapping[str, tuple[int, ...]], dtype: str,
                                load: Callable[[str], np.ndarray]) -> None:
  """One safetensors file written a tensor at a time: the header is known from the shapes, so no tensor has to
  wait in memory for the others (safetensors' own `save_file` serialises everything to bytes first)."""
  code, itemsize = _ST_DTYPES[dtype]
  header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
  offset = 0
  for name in names:
    nbytes = math.prod(shapes[name]) * itemsize
    header[name] = {"dtype": code, "shape": list(shapes[name]), "data_offsets": [offset, offset + nbytes]}
    offset += nbytes
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned, as safetensors writes it
  tmp = path.with_name(path.name + ".partial")
  with open(tmp, "wb") as f:
    f.write(len(blob).to_bytes(8, "little"))
    f.write(blob)
    for name in names:
      arr = np.ascontiguousarray(_cast(load(name), dtype))
      if tuple(arr.shape) != tuple(shapes[name]):
        raise GGUFError(f"{path}: tensor {name!r} came out as {arr.shape}, expected {shapes[name]}")
      f.write(arr.reshape(-1).view(np.uint8).data)
      del arr
  os.replace(tmp, path)


def write_tokenizer(model: GGUFModel, dst: str | os.PathLike) -> list[str]:
  dst = Path(dst)
  dst.mkdir(parents=True, exist_ok=True)
  model.tokenizer().save(str(dst / "tokenizer.json"))
  config = {k: v for k, v in model.tokenizer_config.items() if not k.startswith("_") and v is not None}
  (dst / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
  return ["tokenizer.json", "tokenizer_config.json"]


def write_hf_folder(model: GGUFModel, dst: str | os.PathLike, dtype: str = "float32",
                    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> list[str]:
  """A stock Hugging Face folder (config.json, model.safetensors or shards + index, tokenizer files) that
  `AutoModelForCausalLM.from_pretrained(dst)` and `AutoTokenizer.from_pretrained(dst)` load without remote code.
  Returns the file names written. float32 (the default) holds dequantised values exactly."""
  if dtype not in _ST_DTYPES:
    raise GGUFError(f"{model.path}: dtype {dtype!r} is not one of {sorted(_ST_DTYPES)}")
  dst = Path(dst)
  dst.mkdir(parents=True, exist_ok=True)
  written = write_tokenizer(model, dst)  # first: it fails fast on a tokenizer we cannot build
  tensors = model.tensors
  itemsize = _ST_DTYPES[dtype][1]
  shards: list[list[str]] = [[]]
  size = 0
  for name in tensors:  # file order keeps a layer's tensors together
    nbytes = math.prod(tensors.shape(name)) * itemsize
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(name)
    size += nbytes
  shapes = {name: tensors.shape(name) for name in tensors}
  if len(shards) == 1:
    write_safetensors_streaming(dst / "model.safetensors", shards[0], shapes, dtype, tensors.__getitem__)
    written.append("model.safetensors")
  else:
    weight_map = {}
    for i, names in enumerate(shards):
      fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
      write_safetensors_streaming(dst / fname, names, shapes, dtype, tensors.__getitem__)
      weight_map.update(dict.fromkeys(names, fname))
      written.append(fname)
    total = sum(math.prod(s) * itemsize for s in shapes.values())
    (dst / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    written.append("model.safetensors.index.json")
  config = dict(model.config, dtype=dtype)
  (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")
  written.append("config.json")
  return written
