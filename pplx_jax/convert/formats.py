"""Conversions between model formats: a pplx-jax workdir (`to_jax`), a stock Hugging Face folder (`to_hf`: Qwen3Model
with `"is_causal": false`, no remote code) and a sentence-transformers folder (`to_st`: that model + mean pooling).

Every conversion writes into a temporary sibling of DST (`core.paths.staged_output`) and renames it into place only
when complete, so a failure (bad tensor, wrong shape, full disk) never leaves a half-written DST behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from pplx_jax.convert import hf
from pplx_jax.convert.load import source_params
from pplx_jax.convert.sentence_transformers import write_st_files
from pplx_jax.core import checkpoint as ckpt
from pplx_jax.core import paths
from pplx_jax.core.paths import staged_output


def to_jax(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
  """A Hugging Face Qwen3 folder (or any model path) -> a pplx-jax workdir holding one checkpoint at step 0."""
  params, cfg, tok_dir, extra = source_params(src)
  # Imported weights keep their stored dtype as the parameter dtype, so the round trip is bit-exact.
  dtype = extra.get("source_dtype", cfg.param_dtype)
  if dtype in ("float32", "bfloat16", "float16"):
    cfg = cfg.replace(param_dtype=dtype)
  with staged_output(dst) as tmp:
    ckpt.save(tmp, 0, params, cfg, extra=extra)
    if tok_dir is not None:
      ckpt.copy_tokenizer(tok_dir, tmp / ckpt.TOKENIZER)
    (tmp / "config.json").write_text(json.dumps({"model": cfg.to_dict(), "converted_from": str(src)}, indent=2))
  return paths.as_path(dst)


def _write_hf(tmp: Path, params, cfg, tok_dir, dtype: str | None, max_shard_bytes: int) -> str:
  import ml_dtypes  # noqa: F401

  dtype = dtype or cfg.param_dtype
  tensors = hf.params_to_hf(params, cfg)
  np_dtype = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}[dtype]
  tensors = {k: v.astype(np_dtype, copy=False) for k, v in tensors.items()}
  hf.write_safetensors(tensors, tmp, max_shard_bytes)
  (tmp / "config.json").write_text(json.dumps(hf.hf_config_from_model_config(cfg, dtype), indent=2))
  if tok_dir is None:
    raise FileNotFoundError("the source model has no tokenizer files; an exported model must carry its tokenizer")
  ckpt.copy_tokenizer(tok_dir, tmp)
  return dtype


def to_hf(src: str | os.PathLike, dst: str | os.PathLike, dtype: str | None = None,
          max_shard_bytes: int = hf.DEFAULT_MAX_SHARD_BYTES) -> Path:
  """Any model path -> a folder stock `transformers.AutoModel.from_pretrained(dst)` loads as a bidirectional
  Qwen3Model (no remote code)."""
  params, cfg, tok_dir, extra = source_params(src)
  with staged_output(dst) as tmp:
    _write_hf(tmp, params, cfg, tok_dir, dtype or extra.get("source_dtype"), max_shard_bytes)
  return paths.as_path(dst)


def to_st(src: str | os.PathLike, dst: str | os.PathLike, dtype: str | None = None,
          max_shard_bytes: int = hf.DEFAULT_MAX_SHARD_BYTES, max_seq_length: int = 512) -> Path:
  """Any model path -> a sentence-transformers folder (HF model at the root + mean pooling)."""
  params, cfg, tok_dir, extra = source_params(src)
  with staged_output(dst) as tmp:
    _write_hf(tmp, params, cfg, tok_dir, dtype or extra.get("source_dtype"), max_shard_bytes)
    write_st_files(tmp, cfg.hidden_size, max_seq_length)
  return paths.as_path(dst)


def _tokenizer_config_with_max_length(folder: Path, max_length: int) -> None:
  path = folder / "tokenizer_config.json"
  config = json.loads(path.read_text()) if path.is_file() else {}
  if not config.get("model_max_length") and not config.get("max_length"):
    config["model_max_length"] = int(max_length)
    path.write_text(json.dumps(config, indent=2))


def to_onnx(src: str | os.PathLike, dst: str | os.PathLike, max_seq_length: int = 512,
            max_inline_bytes: int | None = None) -> Path:
  """Any model path -> a servable ONNX folder (onnxruntime, TEI's ORT backend, fastembed)."""
  from pplx_jax.convert import onnx, pplx, sentence_transformers

  params, cfg, tok_dir, extra = source_params(src)
  if tok_dir is None:
    raise FileNotFoundError("the source model has no tokenizer files; an exported model must carry its tokenizer")
  with staged_output(dst) as tmp:
    onnx.export(params, cfg, tmp / onnx.MODEL_FILE, max_inline_bytes or onnx.MAX_INLINE_BYTES)
    text, _ = pplx.export_config(cfg, extra, "float32", None, pplx.eos_token_id(tok_dir))
    (tmp / "config.json").write_text(text)
    (tmp / "1_Pooling").mkdir()
    (tmp / "1_Pooling" / "config.json").write_text(json.dumps(sentence_transformers.pooling_config(cfg.hidden_size), indent=4))
    ckpt.copy_tokenizer(tok_dir, tmp)
    _tokenizer_config_with_max_length(tmp, max_seq_length)
  return paths.as_path(dst)


def parse_size(text: str) -> int:
  text = text.strip().upper()
  units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}
  for u in sorted(units, key=len, reverse=True):
    if text.endswith(u):
      return int(float(text[:-len(u)]) * units[u])
  return int(text)
