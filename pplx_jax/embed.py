"""`pplx-jax embed`: texts -> mean-pooled embeddings (float32, int8 or packed binary), in input order.

Batches are bucketed by length (sorted, padded to a few fixed lengths so only a handful of shapes compile) and
sharded over all local devices along the batch axis.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Iterator, Sequence

import jax
import numpy as np
from flax import nnx

from pplx_jax import checkpoint as ckpt
from pplx_jax import sharding as shd
from pplx_jax.models import pooling


class InputError(ValueError):
  pass


def _lines(path: Path) -> Iterator[tuple[str, str]]:
  """("file:line", the decoded line without its newline); invalid UTF-8 stops with the file and line."""
  with open(path, "rb") as f:
    for lineno, raw in enumerate(f, 1):
      try:
        yield f"{path}:{lineno}", raw.decode("utf-8").rstrip("\r\n")
      except UnicodeDecodeError as e:
        raise InputError(f"{path}:{lineno}: invalid UTF-8 ({e.reason} at byte {e.start})") from None


def jsonl_field(path: Path, field: str) -> Iterator[tuple[str, object]]:
  """("file:line", obj[field]) for every line of a `.jsonl` input (of `embed` and `embed --contextual`); an empty
  line, invalid JSON or a missing field stops with the file and line."""
  for where, line in _lines(path):
    if not line.strip():
      raise InputError(f"{where}: empty line")
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      raise InputError(f"{where}: invalid JSON ({e.msg}, column {e.colno})") from None
    if not isinstance(obj, dict) or field not in obj:
      raise InputError(f"{where}: missing field {field!r}")
    yield where, obj[field]


def read_texts(path: str | os.PathLike, field: str = "text") -> list[str]:
  """`.txt`: one text a line; `.jsonl`: one object a line with a `text` field. Errors name the file and line."""
  path = Path(path)
  if not path.is_file():
    raise InputError(f"{path}: no such file")
  texts = []
  if path.suffix in (".jsonl", ".json"):
    records = jsonl_field(path, field)
  else:
    records = _lines(path)
  for where, text in records:
    if not isinstance(text, str):
      raise InputError(f"{where}: field {field!r} is {type(text).__name__}, expected a string")
    if not text.strip():
      raise InputError(f"{where}: empty text")
    texts.append(text)
  if not texts:
    raise InputError(f"{path}: no texts")
  return texts


def bucket_length(n: int, max_length: int, minimum: int = 16) -> int:
  """Round a length up to a power of two (bounded by max_length): few distinct compiled shapes."""
  b = minimum
  while b < n:
    b *= 2
  return min(b, max_length)


@jax.jit(static_argnums=0)
def _mean_embeddings(graphdef, state, ids, mask):
  # graphdef is static and hashable: every call with the same model structure and shapes reuses one compile.
  model = nnx.merge(graphdef, state)
  return pooling.mean_pool(model(ids, mask), mask)


def make_embed_fn(model, mesh: jax.sharding.Mesh, rules):
  """(ids, mask) numpy -> float32 mean-pooled embeddings, the batch sharded over `mesh`."""
  graphdef, state = nnx.split(model)
  in_sh = shd.batch_sharding(mesh, rules, 2)

  def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    with shd.activate(mesh, rules):
      out = _mean_embeddings(graphdef, state, jax.device_put(ids, in_sh), jax.device_put(mask, in_sh))
    return np.asarray(jax.device_get(out))

  return run


def embed_token_ids(run, token_ids: Sequence[Sequence[int]], pad_id: int, batch_size: int, max_length: int,
                    multiple: int = 1, progress: bool = False) -> np.ndarray:
  """Float32 embeddings of pre-tokenised texts, in input order (sorted into length buckets internally)."""
  n = len(token_ids)
  order = sorted(range(n), key=lambda i: len(token_ids[i]))
  batch_size = max(multiple, -(-batch_size // multiple) * multiple)
  out: np.ndarray | None = None
  bar = None
  if progress:
    from tqdm import tqdm
    bar = tqdm(total=n, unit="text", desc="embed", disable=not sys.stderr.isatty())
  for start in range(0, n, batch_size):
    idx = order[start:start + batch_size]
    length = bucket_length(max(len(token_ids[i][:max_length]) for i in idx), max_length)
    ids = np.full((batch_size, length), pad_id, np.int32)
    mask = np.zeros((batch_size, length), np.int32)
    for row, i in enumerate(idx):
      t = token_ids[i][:max_length]
      ids[row, :len(t)] = t
      mask[row, :len(t)] = 1
    emb = run(ids, mask)[:len(idx)]
    if out is None:
      out = np.zeros((n, emb.shape[-1]), np.float32)
    out[idx] = emb
    if bar is not None:
      bar.update(len(idx))
  if bar is not None:
    bar.close()
  return out


def embed_texts(model_path: str, texts: Sequence[str], *, batch_size: int = 32, max_length: int = 512,
                compute_dtype: str = "float32", progress: bool = False) -> np.ndarray:
  """Float32 mean-pooled embeddings of `texts` with the model at `model_path` (any path checkpoint.resolve takes)."""
  from pplx_jax.tokenizers import load_tokenizer

  mesh = shd.make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, jax.local_devices())
  rules = shd.DEFAULT_RULES
  model, cfg, tok_dir = ckpt.load_model(model_path, mesh=mesh, rules=rules, compute_dtype=compute_dtype,
                                        remat="none")
  if tok_dir is None:
    raise InputError(f"{model_path}: no tokenizer files found beside the model")
  tok = load_tokenizer(tok_dir)
  ids = tok.encode_batch(list(texts))
  too_big = [i for i, t in enumerate(ids) if t and max(t) >= cfg.vocab_size]
  if too_big:
    raise InputError(f"text {too_big[0]} has token id {max(ids[too_big[0]])} >= model vocab_size {cfg.vocab_size}")
  run = make_embed_fn(model, mesh, rules)
  return embed_token_ids(run, ids, tok.pad_id, batch_size, max_length, multiple=mesh.size, progress=progress)


def finalize(emb: np.ndarray, dtype: str = "float32", dim: int | None = None) -> np.ndarray:
  """Matryoshka truncation, then quantisation, as stored on disk."""
  if dim:
    if dim > emb.shape[-1]:
      raise InputError(f"--dim {dim} exceeds the embedding size {emb.shape[-1]}")
    emb = emb[:, :dim]
  return pooling.quantize_np(emb, dtype)


def add_args(p) -> None:
  p.add_argument("--model", required=True, help="pplx-jax workdir / checkpoint step, or a Hugging Face / "
                 "sentence-transformers folder")
  p.add_argument("--input", required=True, help=".txt (one text a line) or .jsonl (field `text`); with "
                 "--contextual a .jsonl of documents {\"doc_id\": ..., \"chunks\": [...]}")
  p.add_argument("--output", required=True, help="output .npy")
  p.add_argument("--dtype", default="float32", choices=("float32", "int8", "binary"))
  p.add_argument("--dim", type=int, default=None, help="keep the first N dimensions (Matryoshka) before quantising")
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--max-length", type=int, default=512)
  p.add_argument("--compute-dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--contextual", action="store_true",
                 help="late chunking (pplx-embed-context): one row per chunk, each chunk embedded in one pass over "
                      "its document (windows of --max-length tokens for longer documents)")


def run(args) -> int:
  if getattr(args, "contextual", False):
    from pplx_jax import embed_contextual
    return embed_contextual.run(args)
  texts = read_texts(args.input)
  if args.dim is not None and args.dim <= 0:
    raise InputError(f"--dim must be positive, got {args.dim}")
  emb = embed_texts(args.model, texts, batch_size=args.batch_size, max_length=args.max_length,
                    compute_dtype=args.compute_dtype, progress=True)
  out = finalize(emb, args.dtype, args.dim)
  Path(args.output).parent.mkdir(parents=True, exist_ok=True)
  np.save(args.output, out)
  print(f"wrote {args.output}: {out.shape[0]} rows x {out.shape[1]} ({out.dtype}, {args.dtype})")
  return 0
