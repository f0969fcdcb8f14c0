"""Contextual data (paper §4.2, §4.5; ConTEB): documents split into chunks, with queries that name their gold chunk.

Files -> TFDS ArrayRecord datasets (like :mod:`pplx_jax.data.pairs`, no TensorFlow)::

    prepare_contextual("docs/*.jsonl", "data/")          # -> data/contextual/1.0.0
    prepare_wordnet_contextual("data/")                  # -> data/wordnet_contextual/1.0.0

Input records (``.jsonl`` lines, or ``.parquet`` rows with a list<string> ``chunks`` column and a
list<struct<text, chunk>> ``queries`` column; a trailing ``.gz`` is decompressed)::

    {"doc_id": "d1", "chunks": ["chunk 1", "chunk 2", ...], "queries": [{"text": "...", "chunk": 1}, ...]}

``chunk`` is the 0-based index of the query's gold chunk. Chunks are in document order (late chunking reads them in
that order) and their boundaries are the data's: nothing is re-chunked. Other fields are ignored. A bad record
(invalid UTF-8 or JSON, a missing/null or non-string/empty ``doc_id``, ``chunks`` not a non-empty list of non-empty
strings, ``queries`` not a list of ``{"text": non-empty string, "chunk": index in range}``, and for training
datasets a document without queries) raises :class:`~pplx_jax.data.text.DataError` naming ``file:line``
(parquet: the 0-based row) before anything is written, or is skipped and counted with ``on_error="skip"``
(``dataset_metadata(dir)["skipped"]``). Splits: ``train``/``validation`` by a stable hash of seed and the
document's *content* (its chunks), so duplicate documents never straddle the splits.

Dataset records are ``{"doc_id", "chunks", "query_text", "query_chunk", "source", "line"}`` (strings as bytes).

Evaluation (:func:`retrieval_set`, ConTEB protocol): every query is scored against every chunk of the collection;
``qrels[i]`` are the indices (into the flattened chunk list) of query i's gold chunks; identical query texts are
merged into one query with all their gold chunks relevant.

Training batches (:class:`ContextualPipeline`): one (document, query) example per document visit; a document with
several queries serves them in turn across epochs (query (epoch + document index) mod n), so the choice is a pure
function of the position in the stream (deterministic and resumable).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pplx_jax.data import builders
from pplx_jax.data import text as text_lib
from pplx_jax.data import wordnet
from pplx_jax.data.pipeline import CheckpointableIterator, _shard, process_rows
from pplx_jax.data.text import DataError

log = logging.getLogger(__name__)

__all__ = ["REASONS", "iter_contextual_records", "prepare_contextual", "prepare_wordnet_contextual", "read_documents",
           "retrieval_set", "wordnet_retrieval_set", "ContextualPipeline", "layout_document"]

REASONS = ("invalid_utf8", "invalid_json", "missing_field", "non_string_field", "empty_text", "invalid_chunks",
           "invalid_queries", "no_queries")
SPLITS = builders.SPLITS
VERSION = builders.VERSION
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


# ---------------------------------------------------------------------------------------------
# Reading and validating records


def _string(value, what: str, path, line: int, reason: str) -> str | DataError:
  if isinstance(value, bytes):
    try:
      value = value.decode("utf-8")
    except UnicodeDecodeError as e:
      return DataError(path, line, "invalid_utf8", f"{what}: invalid UTF-8 ({e.reason} at byte {e.start})")
  if not isinstance(value, str):
    return DataError(path, line, reason, f"{what} is a {type(value).__name__}, not a string")
  if not value.strip():
    return DataError(path, line, reason if reason != "non_string_field" else "empty_text", f"{what} is empty")
  return value


def _as_list(value):
  return value.tolist() if isinstance(value, np.ndarray) else value


def validate(obj, path, line: int, require_queries: bool = True) -> dict | DataError:
  """A decoded record -> {"doc_id", "chunks", "queries"} or the DataError saying what is wrong with it."""
  if not isinstance(obj, Mapping):
    return DataError(path, line, "invalid_json", f"expected a JSON object, got {type(obj).__name__}")
  if obj.get("doc_id") is None:
    return DataError(path, line, "missing_field", "record has no 'doc_id' field")
  doc_id = obj["doc_id"]
  doc_id = str(doc_id) if isinstance(doc_id, (int, np.integer)) else doc_id  # numeric ids are fine
  doc_id = _string(doc_id, "field 'doc_id'", path, line, "non_string_field")
  if isinstance(doc_id, DataError):
    return doc_id
  chunks = _as_list(obj.get("chunks"))
  if chunks is None:
    return DataError(path, line, "missing_field", "record has no 'chunks' field")
  if not isinstance(chunks, (list, tuple)) or not chunks:
    return DataError(path, line, "invalid_chunks", "field 'chunks' must be a non-empty list of strings")
  out_chunks = []
  for k, c in enumerate(chunks):
    c = _string(c, f"chunks[{k}]", path, line, "invalid_chunks")
    if isinstance(c, DataError):
      return c if c.reason == "invalid_utf8" else DataError(path, line, "invalid_chunks", str(c).split(": ", 1)[1])
    out_chunks.append(c)
  queries = _as_list(obj.get("queries"))
  if queries is None:
    queries = []
  if not isinstance(queries, (list, tuple)):
    return DataError(path, line, "invalid_queries", "field 'queries' must be a list of {\"text\", \"chunk\"}")
  out_q = []
  for j, q in enumerate(queries):
    if not isinstance(q, Mapping):
      return DataError(path, line, "invalid_queries", f"queries[{j}] is a {type(q).__name__}, not an object")
    text = _string(q.get("text"), f"queries[{j}].text", path, line, "invalid_queries")
    if isinstance(text, DataError):
      return text if text.reason == "invalid_utf8" else DataError(path, line, "invalid_queries",
                                                                  str(text).split(": ", 1)[1])
    chunk = q.get("chunk")
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or not 0 <= chunk < len(out_chunks):
      return DataError(path, line, "invalid_queries",
                       f"queries[{j}].chunk={chunk!r} is not a chunk index in 0..{len(out_chunks) - 1}")
    out_q.append({"text": text, "chunk": int(chunk)})
  if require_queries and not out_q:
    return DataError(path, line, "no_queries", "document has no queries (a training document needs one)")
  return {"doc_id": doc_id, "chunks": out_chunks, "queries": out_q}


def _jsonl_records(path: Path, require_queries: bool) -> Iterator[tuple[int, dict | DataError]]:
  for line_no, obj in text_lib.jsonl_objects(path):
    yield line_no, obj if isinstance(obj, DataError) else validate(obj, path, line_no, require_queries)


def _parquet_records(path: Path, require_queries: bool) -> Iterator[tuple[int, dict | DataError]]:
  for row, obj in text_lib.parquet_rows(path, ("doc_id", "chunks", "queries"), ("doc_id", "chunks"), 4096):
    yield row, validate(obj, path, row, require_queries)


def iter_contextual_records(inputs, on_error: str = "raise", stats: dict | None = None, log_skipped: bool = True,
                            require_queries: bool = True) -> Iterator[tuple[str, int, dict]]:
  """Yield ``(file, line, {"doc_id", "chunks", "queries"})`` for every good record, in order (line: 1-based for
  JSONL, the 0-based row for parquet). ``stats`` (updated in place) counts ``records`` and each skipped reason."""
  if on_error not in text_lib.ON_ERROR:
    raise ValueError(f"on_error must be one of {text_lib.ON_ERROR}, got {on_error!r}")
  stats = {} if stats is None else stats
  stats.setdefault("records", 0)
  for path in text_lib.expand_inputs(inputs):
    fmt = text_lib.file_format(path)
    if fmt not in ("jsonl", "parquet"):
      raise DataError(path, None, "unsupported_format", "contextual documents are read from .jsonl or .parquet files")
    reader = _jsonl_records if fmt == "jsonl" else _parquet_records
    for line_no, rec in reader(path, require_queries):
      if isinstance(rec, DataError):
        text_lib.skip_or_raise(rec, on_error, stats, log_skipped)
        continue
      stats["records"] += 1
      yield str(path), line_no, rec


# ---------------------------------------------------------------------------------------------
# TFDS builder


def _features() -> dict:
  import tensorflow_datasets as tfds

  return {
      "doc_id": tfds.features.Text(),
      "chunks": tfds.features.Sequence(tfds.features.Text()),
      "query_text": tfds.features.Sequence(tfds.features.Text()),
      "query_chunk": tfds.features.Sequence(np.int64),
      "source": tfds.features.Text(),
      "line": np.int64,
  }


def _example(rec: dict, source: str, line: int) -> dict:
  return {"doc_id": rec["doc_id"], "chunks": rec["chunks"], "query_text": [q["text"] for q in rec["queries"]],
          "query_chunk": [q["chunk"] for q in rec["queries"]], "source": source, "line": line}


def _build(name: str, out_dir, params: dict, skipped: dict, split_counts: dict, examples, description: str) -> Path:
  return builders.build_dataset(name, out_dir, params, skipped, split_counts, examples, description, _features(),
                                kind="contextual", unit="documents")


def _check(name: str, validation_fraction: float, on_error: str = "raise") -> None:
  if not _NAME_RE.match(name):
    raise ValueError(f"dataset name {name!r} is not valid: use lowercase letters, digits and '_'")
  if not 0.0 <= validation_fraction < 1.0:
    raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
  if on_error not in text_lib.ON_ERROR:
    raise ValueError(f"on_error must be one of {text_lib.ON_ERROR}, got {on_error!r}")


def _split(rec: dict, validation_fraction: float, seed: int) -> str:
  # By content: a document repeated under two ids (or in two files) lands in one split.
  return wordnet.split_of("\x1f".join(rec["chunks"]), validation_fraction, seed)


def prepare_contextual(inputs, out_dir, name: str = "contextual", validation_fraction: float = 0.01, seed: int = 0,
                       on_error: str = "raise") -> Path:
  """JSONL/Parquet contextual documents -> TFDS ArrayRecord dataset ``out_dir/name/1.0.0`` (returned).

  Every record is validated before anything is written (module docstring); preparing the same inputs with the
  same parameters again reuses the dataset, different ones into the same place is an error.
  """
  _check(name, validation_fraction, on_error)
  files = text_lib.expand_inputs(inputs)
  params = {"kind": "contextual", "inputs": [{"path": str(f.resolve()), "bytes": f.stat().st_size} for f in files],
            "validation_fraction": validation_fraction, "seed": seed, "on_error": on_error}
  existing = builders.existing_dataset(name, out_dir, params)
  if existing is not None:
    return existing
  t0 = time.perf_counter()
  stats: dict = {}
  split_counts = dict.fromkeys(SPLITS, 0)
  for _, _, rec in iter_contextual_records(files, on_error, stats):
    split_counts[_split(rec, validation_fraction, seed)] += 1
  skipped = {r: stats[r] for r in REASONS if stats.get(r)}
  log.info("%s: %d good documents (%s), skipped %s, checked in %.1f s", name, stats["records"], split_counts,
           skipped or "none", time.perf_counter() - t0)
  index = {str(f): i for i, f in enumerate(files)}

  def examples(split: str):
    for source, line, rec in iter_contextual_records(files, on_error, log_skipped=False):
      if _split(rec, validation_fraction, seed) == split:
        yield f"{index[source]}:{line}", _example(rec, source, line)

  return _build(name, out_dir, params, skipped, split_counts, examples,
                f"Contextual documents (chunks + queries with gold chunks) from {len(files)} file(s).")


def prepare_wordnet_contextual(out_dir, validation_fraction: float = 0.05, seed: int = 0, limit: int | None = None,
                               name: str = "wordnet_contextual", wordnet_dir=None) -> Path:
  """The WordNet contextual set (:mod:`pplx_jax.data.wordnet_contextual`) as TFDS dataset ``out_dir/name/1.0.0``,
  split by synset like the other WordNet datasets (same `validation_fraction` and `seed` = same held-out synsets)."""
  from pplx_jax.data import wordnet_contextual

  _check(name, validation_fraction)
  params = {"kind": "wordnet_contextual", "validation_fraction": validation_fraction, "seed": seed, "limit": limit}
  existing = builders.existing_dataset(name, out_dir, params)
  if existing is not None:
    return existing
  records = list(wordnet_contextual.documents(None, validation_fraction, seed, limit, wordnet_dir))
  split_of = {r["doc_id"]: wordnet.split_of(r["doc_id"], validation_fraction, seed) for r in records}
  split_counts = dict.fromkeys(SPLITS, 0)
  for s in split_of.values():
    split_counts[s] += 1

  def examples(split: str):
    for r in records:
      if split_of[r["doc_id"]] == split:
        yield r["doc_id"], _example(r, r["doc_id"], int(r["doc_id"].split(":")[1]))

  return _build(name, out_dir, params, {}, split_counts, examples,
                "WordNet 3.0 synsets as contextual documents: a title chunk naming the synset, then chunks that "
                "only say 'it' (kind, category, definition, examples), one query per aspect.")


# ---------------------------------------------------------------------------------------------
# Reading prepared datasets and files


def _text(v) -> str:
  if isinstance(v, np.ndarray) and v.ndim == 0:
    v = v.item()
  return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def record(raw) -> dict:
  """A prepared-dataset record (bytes and arrays) or an in-memory record -> {"doc_id", "chunks", "queries"}."""
  if "queries" in raw:
    return {"doc_id": _text(raw["doc_id"]), "chunks": [_text(c) for c in raw["chunks"]],
            "queries": [{"text": _text(q["text"]), "chunk": int(q["chunk"])} for q in raw["queries"]]}
  texts, chunks = list(raw["query_text"]), np.asarray(raw["query_chunk"]).tolist()
  return {"doc_id": _text(raw["doc_id"]), "chunks": [_text(c) for c in raw["chunks"]],
          "queries": [{"text": _text(t), "chunk": int(c)} for t, c in zip(texts, chunks)]}


def _read(source, indices: list[int]) -> list:
  getitems = getattr(source, "__getitems__", None)
  return list(getitems(indices)) if getitems is not None else [source[i] for i in indices]


def read_documents(path, split: str = "validation", require_queries: bool = False) -> list[dict]:
  """All documents of a prepared dataset's `split`, or of JSONL/Parquet file(s) (then `split` is ignored; a document
  without queries is accepted as a distractor unless `require_queries`)."""
  if isinstance(path, (str, os.PathLike)) and Path(path).is_dir():
    source = builders.load_split(path, split)
    out = []
    for s in range(0, len(source), 1024):
      out.extend(record(r) for r in _read(source, list(range(s, min(len(source), s + 1024)))))
    return out
  return [rec for _, _, rec in iter_contextual_records(path, require_queries=require_queries)]


# ---------------------------------------------------------------------------------------------
# Evaluation sets (ConTEB protocol)


def retrieval_set(records: Iterable[Mapping], max_docs: int | None = None, max_queries: int | None = None,
                  sample_seed: int = 0) -> tuple[list[str], list[list[str]], list[list[int]]]:
  """Documents -> ``(queries, docs, qrels)``: docs[i] is document i's chunk list; qrels[j] the indices of query j's
  gold chunks in the *flattened* chunk list (documents in order, chunks in order), so every query is scored against
  every chunk of the collection. Identical query texts are merged (all their gold chunks relevant).

  ``max_docs``: a seeded sample of documents (their order kept), the queries being theirs; ``max_queries``: then a
  seeded sample of those queries (every document stays in the collection).
  """
  records = list(records)
  rng = np.random.default_rng(sample_seed)
  if max_docs is not None and max_docs < len(records):
    if max_docs < 1:
      raise ValueError(f"max_docs must be positive, got {max_docs}")
    keep = np.sort(rng.choice(len(records), max_docs, replace=False))
    records = [records[i] for i in keep]
  docs = [list(r["chunks"]) for r in records]
  index: dict[str, int] = {}
  rel: list[set[int]] = []
  offset = 0
  for r, chunks in zip(records, docs):
    for q in r["queries"]:
      j = index.setdefault(q["text"], len(index))
      if j == len(rel):
        rel.append(set())
      rel[j].add(offset + int(q["chunk"]))
    offset += len(chunks)
  queries, qrels = list(index), [sorted(s) for s in rel]
  if max_queries is not None and max_queries < len(queries):
    keep = np.sort(rng.choice(len(queries), max_queries, replace=False))
    queries, qrels = [queries[i] for i in keep], [qrels[i] for i in keep]
  return queries, docs, qrels


def wordnet_retrieval_set(split: str = "validation", max_docs: int | None = None, max_queries: int | None = None,
                          sample_seed: int = 0, validation_fraction: float = 0.05, seed: int = 0,
                          limit: int | None = None):
  """:func:`retrieval_set` of the WordNet contextual documents of `split` (held-out synsets by default)."""
  from pplx_jax.data import wordnet_contextual

  records = list(wordnet_contextual.documents(split, validation_fraction, seed, limit))
  if not records:
    raise ValueError(f"the WordNet contextual {split} split is empty (validation_fraction={validation_fraction})")
  return retrieval_set(records, max_docs, max_queries, sample_seed)


def load_retrieval_set(data: str, split: str = "validation", **kw):
  """``data``: "wordnet", a prepared contextual dataset, or .jsonl/.parquet document file(s)."""
  if data == "wordnet":
    return wordnet_retrieval_set(split, **kw)
  records = read_documents(data, split)
  if not records:
    raise ValueError(f"{data}: no documents in split {split!r}")
  return retrieval_set(records, **{k: v for k, v in kw.items() if k in ("max_docs", "max_queries", "sample_seed")})


# ---------------------------------------------------------------------------------------------
# Training batches


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
    from pplx_jax.objectives.contextual import content_hash_words

    recs: list[Any] = [None] * len(items)
    by_ds: dict[int, list[int]] = {}
    for p, (ds, _, _) in enumerate(items):
      by_ds.setdefault(ds, []).append(p)
    for ds, positions in by_ds.items():
      for p, raw in zip(positions, _read(self._sources[ds], [items[p][1] for p in positions])):
        recs[p] = record(raw)
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
  Sources, weights, seed, epochs and sharding behave as in :class:`pplx_jax.data.pairs.PairPipeline`.
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
      shard_index, shard_count = _shard(n, shard_index, shard_count)
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
