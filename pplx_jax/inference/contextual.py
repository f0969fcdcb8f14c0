"""`pplx-jax embed --contextual`: documents (lists of chunks) -> one late-chunked embedding per chunk (paper §5).

Input: one document a line, ``{"doc_id": ..., "chunks": ["...", ...]}`` (other fields ignored). Output: one row per
chunk, documents in input order and chunks in order within each, quantised like the plain ``embed``
(`quantize.quantize_np`). Each chunk is tokenized alone (the tokenizer's default encoding, as ``embed`` does), the
chunks are joined with the separator (`separator_id`: ``<|endoftext|>``, as the released contextual model), and
documents longer than ``--max-length`` are encoded in overlapping windows (`late_chunking.plan_windows`).

Batching: documents are sorted by length and packed greedily into batches of about ``batch_size`` windows, padded
to a power-of-two length and a power-of-two span count (few compiled shapes), with the rows sharded over all local
devices.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import jax
import numpy as np
from flax import nnx

from pplx_jax.core import paths
from pplx_jax.core import sharding as shd
from pplx_jax.core.errors import UserError
from pplx_jax.core.tokenizers import ENDOFTEXT
from pplx_jax.data import records
from pplx_jax.inference import load as inference_load
from pplx_jax.inference.embed import bucket_length
from pplx_jax.models import late_chunking as lc

# (ids, mask, span_ids, num_spans) -> [R, num_spans, D] float32 span means
SpanRun = Callable[[np.ndarray, np.ndarray, np.ndarray, int], np.ndarray]


def separator_id(tokenizer) -> int:
  """The chunk separator: <|endoftext|> (id 151643 in Qwen3 vocabularies), else the eos, else the pad token."""
  for candidate in (tokenizer.token_to_id(ENDOFTEXT), tokenizer.eos_id, tokenizer.pad_id):
    if candidate is not None:
      return int(candidate)
  raise UserError("the tokenizer has no <|endoftext|>, eos or pad token to separate chunks with")


def read_documents(path: str | os.PathLike) -> list[list[str]]:
  """`.jsonl`, one ``{"chunks": [str, ...]}`` object a line -> the chunk lists. Errors name the file and line."""
  path = paths.as_path(path)  # local or gs://
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such file")
  docs = []
  for line, obj in records.jsonl_objects(path, blank_lines="error"):
    if isinstance(obj, records.DataError):
      raise obj
    bad = lambda reason, detail: records.DataError(path, line, reason, detail)  # noqa: E731
    if not isinstance(obj, dict) or "chunks" not in obj:
      raise bad("missing_field", "missing field 'chunks'")
    chunks = obj["chunks"]
    if not isinstance(chunks, list) or not chunks:
      raise bad("invalid_chunks", "field 'chunks' must be a non-empty list of strings")
    for k, c in enumerate(chunks):
      if not isinstance(c, str):
        raise bad("non_string_field", f"chunks[{k}] is {type(c).__name__}, expected a string")
      if not c.strip():
        raise bad("empty_text", f"chunks[{k}] is empty")
    docs.append(chunks)
  if not docs:
    raise records.DataError(path, None, "empty_text", "no documents")
  return docs


def _pow2(n: int) -> int:
  return 1 << max(0, (n - 1).bit_length())


def embed_document_ids(run: SpanRun, docs: Sequence[Sequence[Sequence[int]]], sep_id: int, pad_id: int,
                       batch_size: int, max_length: int, multiple: int = 1, stride: int | None = None) -> np.ndarray:
  """Float32 late-chunked embeddings of tokenized documents -> [total chunks, D], documents then chunks in order."""
  if not docs:
    raise UserError("no documents")
  lengths = [sum(len(c) for c in d) + len(d) - 1 for d in docs]
  for i, d in enumerate(docs):
    for k, c in enumerate(d):
      if not len(c):
        raise UserError(f"document {i}: chunk {k} has no tokens")
  windows = [len(lc.plan_windows(d, sep_id, max_length, stride).windows) for d in docs]
  rows = max(multiple, -(-batch_size // multiple) * multiple)
  offsets = np.cumsum([0] + [len(d) for d in docs])
  out: np.ndarray | None = None
  order = sorted(range(len(docs)), key=lambda i: lengths[i])
  start = 0
  while start < len(order):
    group, used = [], 0
    while start < len(order) and (not group or used + windows[order[start]] <= rows):
      group.append(order[start])
      used += windows[order[start]]
      start += 1
    width = bucket_length(min(max(lengths[i] for i in group), max_length), max_length)
    batch = lc.batch_documents([docs[i] for i in group], sep_id, max_length, pad_id, stride, rows_multiple=rows,
                               length=width)
    spans = run(batch["input_ids"], batch["attention_mask"], batch["span_ids"], _pow2(batch["num_spans"]))
    emb = lc.gather_chunks(spans, batch)
    if out is None:
      out = np.zeros((int(offsets[-1]), emb.shape[-1]), np.float32)
    for j, i in enumerate(group):
      out[offsets[i]:offsets[i + 1]] = emb[batch["doc_offsets"][j]:batch["doc_offsets"][j + 1]]
  return out


@jax.jit(static_argnums=(0, 5))
def _span_embeddings(graphdef, state, ids, mask, spans, num_spans):
  return lc.late_chunk_embed(nnx.merge(graphdef, state), ids, mask, spans, num_spans)


def make_span_fn(model, mesh: jax.sharding.Mesh | None = None, rules=None) -> SpanRun:
  """(ids, mask, span_ids, num_spans) numpy -> [R, num_spans, D] float32; rows sharded over `mesh` when given (else
  the caller's active mesh, as in training-time evaluation)."""
  graphdef, state = nnx.split(model)

  def run(ids, mask, spans, num_spans):
    if mesh is None:
      out = _span_embeddings(graphdef, state, ids, mask, spans, num_spans)
    else:
      sh = shd.batch_sharding(mesh, rules, 2)
      with shd.activate(mesh, rules):
        out = _span_embeddings(graphdef, state, *(jax.device_put(x, sh) for x in (ids, mask, spans)), num_spans)
    from pplx_jax.core.distributed import to_host
    return to_host(out)

  return run


def embed_documents_with_model(model, tokenizer, docs: Sequence[Sequence[str]], batch_size: int = 32,
                               max_length: int = 512, mesh=None, rules=None, multiple: int = 1) -> np.ndarray:
  """Late-chunked float32 chunk embeddings of `docs` with an in-memory model -> [total chunks, D]."""
  ids = [tokenizer.encode_batch(list(d)) for d in docs]
  return embed_document_ids(make_span_fn(model, mesh, rules), ids, separator_id(tokenizer), tokenizer.pad_id,
                            batch_size, max_length, multiple)


def embed_documents(model_path: str, docs: Sequence[Sequence[str]], *, batch_size: int = 32, max_length: int = 512,
                    compute_dtype: str = "float32") -> np.ndarray:
  """Late-chunked float32 chunk embeddings with the model at `model_path` -> [total chunks, D]."""
  model, cfg, tok, mesh, rules = inference_load.load(model_path, compute_dtype)
  ids = [tok.encode_batch(list(d)) for d in docs]
  inference_load.check_token_ids([c for d in ids for c in d], cfg.vocab_size, what="chunk")
  return embed_document_ids(make_span_fn(model, mesh, rules), ids, separator_id(tok), tok.pad_id, batch_size,
                            max_length, multiple=mesh.size)
