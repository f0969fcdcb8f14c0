"""Contextual training batches (:class:`ContextualPipeline`, paper §4.2): one (document, query) example per row.

A document's chunks are tokenized alone and laid out as chunk₁ SEP chunk₂ … padded to ``max_chunks`` chunks of at
most ``chunk_len`` tokens (:func:`layout_document`), with span ids marking each chunk for late-chunking pooling and
the gold chunk of the row's query. A document with several queries serves them in turn across epochs, so the choice
is a pure function of the stream position (deterministic and resumable).

The content hashes (:func:`content_hash_ids`, :func:`content_hash_words`) are computed here, on the host, while a
batch is built: rows that carry the same document (identical chunks) get the same hash, which the contextual loss
uses to mask duplicate documents out of each other's negatives.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from pplx_jax.data import prepared
from pplx_jax.data.loader import CheckpointableIterator, process_rows, shard_spec

# ---------------------------------------------------------------- host helpers


def _content_bytes(text: str | bytes | Sequence[str]) -> bytes:
  # A chunk list is the document it concatenates to: a different chunking of the same text is the same document.
  if isinstance(text, bytes):
    return text
  if not isinstance(text, str):
    text = "".join(text)
  return text.encode("utf-8")


def content_hash_ids(texts: Iterable[str | bytes | Sequence[str]]) -> np.ndarray:
  """[N] int32 ids of the MD5 equivalence classes of the texts, numbered in order of first occurrence: identical
  contents share an id. Ids are only comparable within one call: for a global batch assembled from several hosts,
  use `content_hash_words`."""
  classes: dict[bytes, int] = {}
  return np.asarray([classes.setdefault(hashlib.md5(_content_bytes(t)).digest(), len(classes)) for t in texts],
                    np.int32)


def content_hash_words(texts: Iterable[str | bytes | Sequence[str]], words: int = 2) -> np.ndarray:
  """[N, words] int32: the first 32·words bits of each text's MD5, identical on every host without communication.
  With 2 words a false match needs a 64-bit collision (~N^2 / 2^65 per batch); one int32 word would collide with
  probability ~0.4 at N = 65,536."""
  if not 1 <= words <= 4:
    raise ValueError(f"content_hash_words: words={words} must be in 1..4 (MD5 has 128 bits)")
  digests = [hashlib.md5(_content_bytes(t)).digest()[:4 * words] for t in texts]
  return np.frombuffer(b"".join(digests), dtype="<i4").reshape(len(digests), words).astype(np.int32)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Training batches


def decode_document(raw) -> dict:
  """A prepared-dataset record (bytes and arrays) or an in-memory record -> {"doc_id", "chunks", "queries"}."""
  if "queries" in raw:
    return {"doc_id": prepared.as_text(raw["doc_id"]), "chunks": [prepared.as_text(c) for c in raw["chunks"]],
            "queries": [{"text": prepared.as_text(q["text"]), "chunk": int(q["chunk"])} for q in raw["queries"]]}
  texts, chunks = list(raw["query_text"]), np.asarray(raw["query_chunk"]).tolist()
  return {"doc_id": prepared.as_text(raw["doc_id"]), "chunks": [prepared.as_text(c) for c in raw["chunks"]],
          "queries": [{"text": prepared.as_text(t), "chunk": int(c)} for t, c in zip(texts, chunks)]}


def layout_document(chunk_ids: Sequence[Sequence[int]], gold: int, sep_id: int, max_chunks: int, chunk_len: int
                    ) -> tuple[list[int], list[int], int, int]:
  """A document as one training sequence that always fits: chunks truncated to `chunk_len` tokens, at most
  `max_chunks` consecutive chunks kept (a window centred on the gold chunk when the document has more), joined with
  one separator between neighbours. -> (ids, span_ids 1..n / 0 on separators, number of chunks n, gold within them).
  Length <= max_chunks * (chunk_len + 1) - 1."""
  n = len(chunk_ids)
  start = min(max(gold - max_chunks // 2, 0), max(n - max_chunks, 0))
  kept = [list(c[:chunk_len]) for c in chunk_ids[start:start + max_chunks]]
  ids, spans = [], []
  for k, c in enumerate(kept):
    if k:
      ids.append(sep_id)
      spans.append(0)
    c = c or [sep_id]  # a chunk with no tokens (whitespace) still gets a slot; it stays a valid span
    ids.extend(c)
    spans.extend([k + 1] * len(c))
  return ids, spans, len(kept), gold - start


class _Visit:
  """Stream position -> (dataset, record index, epoch): the epoch picks the query, so the choice is resumable."""

  def __init__(self, dataset: int, shard_len: int):
    self.dataset, self.shard_len = dataset, shard_len

  def __call__(self, position, index):
    return self.dataset, int(index), int(position) // self.shard_len


class _Collate:

  def __init__(self, sources, tokenizer, sep_id: int, query_len: int, chunk_len: int, max_chunks: int):
    self._sources, self._tok, self._sep = sources, tokenizer, sep_id
    self._q_len, self._c_len, self._n = query_len, chunk_len, max_chunks
    self._doc_len = max_chunks * (chunk_len + 1) - 1

  def __call__(self, items) -> dict[str, np.ndarray]:
    from pplx_jax.stages.contextual.data import content_hash_words

    recs: list[Any] = [None] * len(items)
    by_ds: dict[int, list[int]] = {}
    for p, (ds, _, _) in enumerate(items):
      by_ds.setdefault(ds, []).append(p)
    for ds, positions in by_ds.items():
      for p, raw in zip(positions, prepared.read_records(self._sources[ds], [items[p][1] for p in positions])):
        recs[p] = decode_document(raw)
    b, pad = len(items), self._tok.pad_id
    out = {"q_ids": np.full((b, self._q_len), pad, np.int32), "q_mask": np.zeros((b, self._q_len), np.int32),
           "c_ids": np.full((b, self._doc_len), pad, np.int32), "c_mask": np.zeros((b, self._doc_len), np.int32),
           "c_spans": np.zeros((b, self._doc_len), np.int32), "chunk_mask": np.zeros((b, self._n), np.int32),
           "gold": np.zeros((b,), np.int32), "dataset": np.asarray([it[0] for it in items], np.int32)}
    queries = []
    for i, ((ds, idx, epoch), r) in enumerate(zip(items, recs)):
      if not r["queries"]:
        raise ValueError(f"dataset {ds} record {idx} ({r['doc_id']}) has no queries; prepare training data with "
                         "prepare_contextual, which rejects such documents")
      q = r["queries"][(epoch + idx) % len(r["queries"])]
      queries.append(q["text"])
      ids, spans, n, gold = layout_document(self._tok.encode_batch(r["chunks"]), q["chunk"], self._sep, self._n,
                                            self._c_len)
      out["c_ids"][i, :len(ids)], out["c_mask"][i, :len(ids)], out["c_spans"][i, :len(ids)] = ids, 1, spans
      out["chunk_mask"][i, :n] = 1
      out["gold"][i] = gold
    for i, t in enumerate(self._tok.encode_batch(queries)):
      t = t[:self._q_len]
      out["q_ids"][i, :len(t)], out["q_mask"][i, :len(t)] = t, 1
    # The hash of the whole document (not of the window kept): copies of one document are duplicates (paper M_ij).
    out["doc_hash"] = content_hash_words([r["chunks"] for r in recs])
    return out


class ContextualPipeline(CheckpointableIterator):
  """Iterator of contextual training batches for one process.

  Each batch: ``q_ids, q_mask`` [B, query_len]; ``c_ids, c_mask, c_spans`` [B, doc_len] (the document's chunks
  joined by `sep_id`, span ids 1..C on chunk k's tokens, 0 on separators and padding; doc_len = max_chunks *
  (chunk_len + 1) - 1, so every document fits one pass); ``chunk_mask`` [B, max_chunks]; ``gold`` [B] (the query's
  chunk in the kept window); ``doc_hash`` [B, 2] (MD5 words of the document, duplicate masking); ``dataset`` [B].
  Sources, weights, seed, epochs and sharding behave as in :class:`pplx_jax.stages.contrastive.data.PairPipeline`.
  """

  _state_format = "pplx_jax.contextual_pipeline/1"

  def __init__(self, sources, tokenizer, batch_size: int, *, sep_id: int, weights: Sequence[float] | None = None,
               query_len: int = 32, chunk_len: int = 32, max_chunks: int = 8, seed: int = 0,
               num_epochs: int | None = None, shard_index: int | None = None, shard_count: int | None = None,
               read_threads: int = 4, prefetch_batches: int = 2):
    import grain

    if isinstance(sources, Sequence) and sources and not isinstance(sources[0], Mapping) and hasattr(
        sources[0], "__len__"):
      sources = list(sources)
    else:
      sources = [sources]
    if min(batch_size, query_len, chunk_len, max_chunks) < 1:
      raise ValueError("batch_size, query_len, chunk_len and max_chunks must be positive")
    sizes = [len(s) for s in sources]
    weights = [float(n) for n in sizes] if weights is None else [float(w) for w in weights]
    if len(weights) != len(sources) or any(not w > 0 for w in weights):
      raise ValueError(f"need one positive mixture weight per source, got {weights} for {len(sources)} sources")
    for n in sizes:
      shard_index, shard_count = shard_spec(n, shard_index, shard_count)
    total = sum(weights)
    self.weights = [w / total for w in weights]
    # Global position (see PairPipeline): the same in every process and for any process count.
    self._config = {"num_records": sizes, "weights": self.weights, "global_batch_size": batch_size * shard_count,
                    "query_len": query_len,
                    "chunk_len": chunk_len, "max_chunks": max_chunks, "sep_id": sep_id, "seed": seed,
                    "num_epochs": num_epochs, "vocab_size": tokenizer.vocab_size}
    parts = []
    for i, n in enumerate(sizes):
      seed_i = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
      ds = grain.MapDataset.range(n).shuffle(seed=seed_i)
      if num_epochs != 1:
        ds = ds.repeat(num_epochs)
      parts.append(ds.map_with_index(_Visit(i, n)))
    ds = parts[0] if len(parts) == 1 else grain.MapDataset.mix(parts, self.weights)
    ds = process_rows(ds, batch_size, shard_index, shard_count)
    ds = ds.map(_Collate(sources, tokenizer, sep_id, query_len, chunk_len, max_chunks))
    self._start(ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                                     prefetch_buffer_size=max(prefetch_batches, read_threads))))
