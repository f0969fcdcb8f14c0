"""Embeddings from a `pplx-jax convert --to onnx` folder with onnxruntime and `tokenizers` (no torch, no JAX model):
the same numbers as `pplx-jax embed`, plain and late-chunked::

    from pplx_jax.convert.onnx_embed import OnnxEmbedder
    enc = OnnxEmbedder("export/onnx")
    enc.embed(["a text", "another"], dtype="int8")                        # = pplx-jax embed --dtype int8
    enc.embed_contextual([["chunk 1", "chunk 2"], ["doc 2"]], dtype="int8")  # = pplx-jax embed --contextual

Plain texts read the graph's pooled outputs (pooler_output, pooler_output_int8, pooler_output_binary; the packed
`binary`/`ubinary` bits are np.packbits(pooler_output_binary > 0)). Late chunking reads `last_hidden_state`:
each chunk is tokenized alone, the chunks are joined with one separator (<|endoftext|>, else eos, else pad: the
order `embed --contextual` uses), `pplx_jax.models.late_chunking.plan_windows` cuts documents longer than `max_length`
into the windows `embed --contextual` uses, and each chunk's embedding is the float32 mean of its own tokens in its
window, quantised with `pplx_jax.models.quantize.quantize_np`. Truncation: a plain text keeps its first
`max_length` tokens, as `embed --max-length` does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from pplx_jax.convert.onnx import MODEL_FILE
from pplx_jax.core.tokenizers import ENDOFTEXT

_POOLED = {"float32": "pooler_output", "int8": "pooler_output_int8", "sign": "pooler_output_binary",
           "binary": "pooler_output_binary", "ubinary": "pooler_output_binary"}

# (input_ids [R, L] int64, attention_mask [R, L] int64) -> last_hidden_state [R, L, D] float32
HiddenRun = Callable[[np.ndarray, np.ndarray], np.ndarray]


def contextual_embed(run: HiddenRun, docs_token_ids: Sequence[Sequence[Sequence[int]]], sep_id: int, pad_id: int,
                     max_length: int | None = 512, stride: int | None = None, batch_size: int = 8) -> np.ndarray:
  """Late-chunked float32 chunk embeddings [total chunks, D] (documents, then chunks, in order) from any runtime
  that returns the last hidden state; the windows are `pplx_jax.models.late_chunking.plan_windows`'."""
  from pplx_jax.models.late_chunking import plan_windows

  rows = []  # (first output row of the document, window)
  offsets = np.cumsum([0] + [len(d) for d in docs_token_ids])
  for i, doc in enumerate(docs_token_ids):
    try:
      plan = plan_windows(doc, sep_id, max_length, stride)
    except ValueError as err:
      raise ValueError(f"document {i}: {err}") from None
    rows.extend((int(offsets[i]), w) for w in plan.windows)
  out: np.ndarray | None = None
  for s in range(0, len(rows), batch_size):
    part = rows[s:s + batch_size]
    width = max(len(w.ids) for _, w in part)
    ids = np.full((len(part), width), pad_id, np.int64)
    mask = np.zeros((len(part), width), np.int64)
    for r, (_, w) in enumerate(part):
      ids[r, :len(w.ids)] = w.ids
      mask[r, :len(w.ids)] = 1
    hidden = np.asarray(run(ids, mask), np.float32)
    if out is None:
      out = np.zeros((int(offsets[-1]), hidden.shape[-1]), np.float32)
    for r, (first, w) in enumerate(part):
      for k in w.chunks:  # span ids are the chunk index + 1 on the chunks pooled from this window
        out[first + k] = hidden[r, :len(w.ids)][w.span_ids == k + 1].mean(0)
  return out


class OnnxEmbedder:
  """An onnxruntime session over `folder/model.onnx` and the folder's tokenizer."""

  def __init__(self, folder: str | os.PathLike, providers: Sequence[str] = ("CPUExecutionProvider",),
               threads: int | None = None):
    import onnxruntime as ort

    from pplx_jax.core.tokenizers import load_tokenizer

    folder = Path(folder)
    if not (folder / MODEL_FILE).is_file():
      raise FileNotFoundError(f"{folder}: no {MODEL_FILE} (write one with `pplx-jax convert SRC DST --to onnx`)")
    options = ort.SessionOptions()
    if threads:
      options.intra_op_num_threads = threads
    self.session = ort.InferenceSession(str(folder / MODEL_FILE), options, providers=list(providers))
    self.tokenizer = load_tokenizer(folder)

  @property
  def separator_id(self) -> int:
    tok = self.tokenizer
    for candidate in (tok.token_to_id(ENDOFTEXT), tok.eos_id, tok.pad_id):
      if candidate is not None:
        return int(candidate)
    raise ValueError("the tokenizer has no <|endoftext|>, eos or pad token to separate chunks with")

  def run(self, outputs: Sequence[str], ids: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    return self.session.run(list(outputs), {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64)})

  def embed(self, texts: Sequence[str], dtype: str = "float32", batch_size: int = 32, max_length: int = 512,
            dim: int | None = None) -> np.ndarray:
    """[N, D] (or packed [N, ceil(D/8)]) as `pplx-jax embed --dtype DTYPE [--dim DIM]` returns it."""
    if dtype not in _POOLED:
      raise ValueError(f"unknown embedding dtype {dtype!r}; expected one of {tuple(_POOLED)}")
    token_ids = [t[:max_length] for t in self.tokenizer.encode_batch(list(texts))]
    parts = []
    for s in range(0, len(token_ids), batch_size):
      part = token_ids[s:s + batch_size]
      width = max(len(t) for t in part)
      ids = np.full((len(part), width), self.tokenizer.pad_id, np.int64)
      mask = np.zeros((len(part), width), np.int64)
      for r, t in enumerate(part):
        ids[r, :len(t)] = t
        mask[r, :len(t)] = 1
      parts.append(self.run([_POOLED[dtype]], ids, mask)[0])
    out = np.concatenate(parts)[:, :dim] if dim else np.concatenate(parts)
    if dtype in ("binary", "ubinary"):
      return np.packbits(out > 0, axis=-1)
    return out

  def embed_contextual(self, docs: Sequence[Sequence[str]], dtype: str = "float32", max_length: int | None = 512,
                       stride: int | None = None, batch_size: int = 8, dim: int | None = None) -> np.ndarray:
    """[total chunks, D] as `pplx-jax embed --contextual --dtype DTYPE [--dim DIM]` returns it."""
    from pplx_jax.models.quantize import quantize_np

    ids = [self.tokenizer.encode_batch(list(d)) for d in docs]
    emb = contextual_embed(lambda i, m: self.run(["last_hidden_state"], i, m)[0], ids, self.separator_id,
                           self.tokenizer.pad_id, max_length, stride, batch_size)
    return quantize_np(emb[:, :dim] if dim else emb, dtype)
