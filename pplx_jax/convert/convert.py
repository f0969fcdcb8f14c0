"""`pplx-jax convert SRC DST --to jax|hf|st`.

Every conversion writes into a temporary sibling of DST and renames it into place only when complete, so a failure
(bad tensor, wrong shape, full disk) never leaves a half-written DST behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pplx_jax import checkpoint as ckpt
from pplx_jax.convert import hf
from pplx_jax.convert.sentence_transformers import write_st_files


@contextlib.contextmanager
def staged_output(dst: str | os.PathLike):
  """Yield a temporary directory that becomes `dst` on success and disappears on failure."""
  dst = Path(dst).resolve()
  if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
    raise FileExistsError(f"{dst}: destination exists and is not empty; choose a new path")
  dst.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.partial-", dir=dst.parent))
  try:
    yield tmp
    if dst.exists():
      dst.rmdir()
    os.replace(tmp, dst)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def _source_params(src: str | os.PathLike) -> tuple[dict[str, Any], Any, Path | None, dict[str, Any]]:
  """(numpy params, model config, tokenizer dir, extra metadata) from any model path."""
  source = ckpt.resolve(src)
  if source.kind == "hf":
    cfg = hf.model_config_from_hf(hf.read_hf_config(source.path), source=str(source.path / "config.json"))
    tensors, dtype = hf.read_safetensors(source.path)
    params = hf.params_from_hf(tensors, cfg, source=str(source.path))
    return params, cfg, source.tokenizer_dir, {"source": str(source.path), "source_dtype": dtype}
  cfg, extra = ckpt.read_model_config(source.path)
  params = ckpt.params_to_numpy(ckpt.restore_params(source.path, cfg))
  return params, cfg, source.tokenizer_dir, extra


def to_jax(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
  """A Hugging Face Qwen3 folder (or any model path) -> a pplx-jax workdir holding one checkpoint at step 0."""
  params, cfg, tok_dir, extra = _source_params(src)
  # Imported weights keep their stored dtype as the parameter dtype, so the round trip is bit-exact.
  dtype = extra.get("source_dtype", cfg.param_dtype)
  if dtype in ("float32", "bfloat16", "float16"):
    cfg = cfg.replace(param_dtype=dtype)
  with staged_output(dst) as tmp:
    ckpt.save(tmp, 0, params, cfg, extra=extra)
    if tok_dir is not None:
      ckpt.copy_tokenizer(tok_dir, tmp / ckpt.TOKENIZER)
    (tmp / "config.json").write_text(json.dumps({"model": cfg.to_dict(), "converted_from": str(src)}, indent=2))
  return Path(dst)


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
  params, cfg, tok_dir, extra = _source_params(src)
  with staged_output(dst) as tmp:
    _write_hf(tmp, params, cfg, tok_dir, dtype or extra.get("source_dtype"), max_shard_bytes)
  return Path(dst)


def to_st(src: str | os.PathLike, dst: str | os.PathLike, dtype: str | None = None,
          max_shard_bytes: int = hf.DEFAULT_MAX_SHARD_BYTES, max_seq_length: int = 512) -> Path:
  """Any model path -> a sentence-transformers folder (HF model at the root + mean pooling)."""
  params, cfg, tok_dir, extra = _source_params(src)
  with staged_output(dst) as tmp:
    _write_hf(tmp, params, cfg, tok_dir, dtype or extra.get("source_dtype"), max_shard_bytes)
    write_st_files(tmp, cfg.hidden_size, max_seq_length)
  return Path(dst)


def parse_size(text: str) -> int:
  text = text.strip().upper()
  units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}
  for u in sorted(units, key=len, reverse=True):
    if text.endswith(u):
      return int(float(text[:-len(u)]) * units[u])
  return int(text)


def add_args(p) -> None:
  p.add_argument("src", help="Hugging Face folder, pplx-jax checkpoint step directory, or pplx-jax workdir")
  p.add_argument("dst", help="output directory (must not exist or be empty)")
  p.add_argument("--to", required=True, choices=("jax", "hf", "st"))
  p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                 help="weights dtype of an hf/st export (default: the dtype the weights were imported in)")
  p.add_argument("--max-shard-size", default="5GB", help="shard safetensors above this size (e.g. 500MB)")
  p.add_argument("--max-seq-length", type=int, default=512, help="sentence-transformers truncation length")


def run(args) -> int:
  if args.to == "jax":
    out = to_jax(args.src, args.dst)
  elif args.to == "hf":
    out = to_hf(args.src, args.dst, args.dtype, parse_size(args.max_shard_size))
  else:
    out = to_st(args.src, args.dst, args.dtype, parse_size(args.max_shard_size), args.max_seq_length)
  print(f"wrote {out} ({args.to})")
  return 0
