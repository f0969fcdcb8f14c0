"""`pplx-jax embed`: texts -> mean-pooled embeddings (float32, int8 or packed binary), in input order.

Batches are bucketed by length (sorted, padded to a few fixed lengths so only a handful of shapes compile) and
sharded over all local devices along the batch axis.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pplx_jax.core import paths
from pplx_jax.core import sharding as shd
from pplx_jax.core.errors import UserError
from pplx_jax.data import records
from pplx_jax.inference import load as inference_load
from pplx_jax.models import pooling, quantize


def read_texts(path: str | os.PathLike, field: str = "text") -> list[str]:
  """`.txt`: one text a line; `.jsonl`: one object a line with a `text` field. Every line is a row of the output,
  so an empty line, invalid JSON or a missing field is an error naming the file and line (`records.DataError`)."""
  path = paths.as_path(path)  # local or gs://
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such file")
  texts = []
  jsonl = path.suffix in (".jsonl", ".json")
  rows = records.jsonl_objects(path, blank_lines="error") if jsonl else records.text_lines(path)
  for line, value in rows:
    if isinstance(value, records.DataError):
      raise value
    if jsonl:
      if not isinstance(value, dict) or field not in value:
        raise records.DataError(path, line, "missing_field", f"missing field {field!r}")
      value = value[field]
    if not isinstance(value, str):
      raise records.DataError(path, line, "non_string_field",
                              f"field {field!r} is {type(value).__name__}, expected a string")
    if not value.strip():
      raise records.DataError(path, line, "empty_text", "empty text")
    texts.append(value)
  if not texts:
    raise records.DataError(path, None, "empty_text", "no texts")
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
  m = inference_load.load(model_path, compute_dtype)
  ids = m.tokenizer.encode_batch(list(texts))
  inference_load.check_token_ids(ids, m.config.vocab_size)
  return embed_token_ids(make_embed_fn(m.model, m.mesh, m.rules), ids, m.tokenizer.pad_id, batch_size, max_length,
                         multiple=m.mesh.size, progress=progress)


def finalize(emb: np.ndarray, dtype: str = "float32", dim: int | None = None) -> np.ndarray:
  """Matryoshka truncation, then quantisation, as stored on disk."""
  if dim:
    if dim > emb.shape[-1]:
      raise UserError(f"--dim {dim} exceeds the embedding size {emb.shape[-1]}")
    emb = emb[:, :dim]
  return quantize.quantize_np(emb, dtype)


@jax.jit(static_argnums=(0, 4))
def _pooled(graphdef, state, ids, mask, kind):
  return pooling.pool(nnx.merge(graphdef, state)(ids, mask), mask, kind)


def embed_with_model(model, tokenizer, texts, pooling_kind: str = "mean", max_length: int = 512,
                     batch_size: int = 64) -> np.ndarray:
  """Float32 pooled embeddings with an in-memory model (training-time evaluation), in input order."""
  from pplx_jax.inference import embed as embed_lib
  graphdef, state = nnx.split(model)
  ids = tokenizer.encode_batch(list(texts))
  mesh = jax.sharding.get_abstract_mesh()
  multiple = 1 if mesh is None or mesh.empty else jax.device_count()

  def run(i, m):
    from pplx_jax.core.distributed import to_host
    return to_host(_pooled(graphdef, state, jnp.asarray(i), jnp.asarray(m), pooling_kind))

  return embed_lib.embed_token_ids(run, ids, tokenizer.pad_id, batch_size, max_length, multiple=multiple)
