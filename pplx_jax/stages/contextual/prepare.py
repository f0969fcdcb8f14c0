"""Contextual data (paper §4.2, §4.5; ConTEB): documents split into chunks, with queries that name their gold chunk.

Files -> TFDS ArrayRecord datasets (like :mod:`pplx_jax.stages.contrastive.prepare`, no TensorFlow)::

    prepare_contextual("docs/*.jsonl", "data/")          # -> data/contextual/1.0.0
    prepare_wordnet_contextual("data/")                  # -> data/wordnet_contextual/1.0.0

Input records (``.jsonl`` lines, or ``.parquet`` rows with a list<string> ``chunks`` column and a
list<struct<text, chunk>> ``queries`` column; a trailing ``.gz`` is decompressed)::

    {"doc_id": "d1", "chunks": ["chunk 1", "chunk 2", ...], "queries": [{"text": "...", "chunk": 1}, ...]}

``chunk`` is the 0-based index of the query's gold chunk. Chunks are in document order (late chunking reads them in
that order) and their boundaries are the data's: nothing is re-chunked. Other fields are ignored. A bad record
(invalid UTF-8 or JSON, a missing/null or non-string/empty ``doc_id``, ``chunks`` not a non-empty list of non-empty
strings, ``queries`` not a list of ``{"text": non-empty string, "chunk": index in range}``, and for training
datasets a document without queries) raises :class:`~pplx_jax.data.records.DataError` naming ``file:line``
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
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from pplx_jax.data import prepared
from pplx_jax.data import records as records_lib
from pplx_jax.data.records import DataError
from pplx_jax.data.sources import wordnet

log = logging.getLogger(__name__)

REASONS = ("invalid_utf8", "invalid_json", "missing_field", "non_string_field", "empty_text", "invalid_chunks",
           "invalid_queries", "no_queries")
SPLITS = prepared.SPLITS
VERSION = prepared.VERSION


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
  for line_no, obj in records_lib.jsonl_objects(path):
    yield line_no, obj if isinstance(obj, DataError) else validate(obj, path, line_no, require_queries)


def _parquet_records(path: Path, require_queries: bool) -> Iterator[tuple[int, dict | DataError]]:
  for row, obj in records_lib.parquet_rows(path, ("doc_id", "chunks", "queries"), ("doc_id", "chunks"), 4096):
    yield row, validate(obj, path, row, require_queries)


def iter_contextual_records(inputs, on_error: str = "raise", stats: dict | None = None, log_skipped: bool = True,
                            require_queries: bool = True) -> Iterator[tuple[str, int, dict]]:
  """Yield ``(file, line, {"doc_id", "chunks", "queries"})`` for every good record, in order (line: 1-based for
  JSONL, the 0-based row for parquet). ``stats`` (updated in place) counts ``records`` and each skipped reason."""
  if on_error not in records_lib.ON_ERROR:
    raise ValueError(f"on_error must be one of {records_lib.ON_ERROR}, got {on_error!r}")
  stats = {} if stats is None else stats
  stats.setdefault("records", 0)
  for path in records_lib.expand_inputs(inputs):
    fmt = records_lib.file_format(path)
    if fmt not in ("jsonl", "parquet"):
      raise DataError(path, None, "unsupported_format", "contextual documents are read from .jsonl or .parquet files")
    reader = _jsonl_records if fmt == "jsonl" else _parquet_records
    for line_no, rec in reader(path, require_queries):
      if isinstance(rec, DataError):
        records_lib.skip_or_raise(rec, on_error, stats, log_skipped)
        continue
      stats["records"] += 1
      yield str(path), line_no, rec


# ---------------------------------------------------------------------------------------------
# TFDS builder


def features() -> dict:
  import tensorflow_datasets as tfds

  return {
      "doc_id": tfds.features.Text(),
      "chunks": tfds.features.Sequence(tfds.features.Text()),
      "query_text": tfds.features.Sequence(tfds.features.Text()),
      "query_chunk": tfds.features.Sequence(np.int64),
      "source": tfds.features.Text(),
      "line": np.int64,
  }


def example(rec: dict, source: str, line: int) -> dict:
  return {"doc_id": rec["doc_id"], "chunks": rec["chunks"], "query_text": [q["text"] for q in rec["queries"]],
          "query_chunk": [q["chunk"] for q in rec["queries"]], "source": source, "line": line}


def _build(name: str, out_dir, params: dict, skipped: dict, split_counts: dict, examples, description: str) -> Path:
  return prepared.build_dataset(name, out_dir, params, skipped, split_counts, examples, description, features(),
                                kind="contextual", unit="documents")


def check_args(name: str, validation_fraction: float, on_error: str = "raise") -> None:
  prepared.check_name(name)
  prepared.check_fraction(validation_fraction)
  if on_error not in records_lib.ON_ERROR:
    raise ValueError(f"on_error must be one of {records_lib.ON_ERROR}, got {on_error!r}")


def document_split(rec: dict, validation_fraction: float, seed: int) -> str:
  # By content: a document repeated under two ids (or in two files) lands in one split.
  return wordnet.split_of("\x1f".join(rec["chunks"]), validation_fraction, seed)


def prepare_contextual(inputs, out_dir, name: str = "contextual", validation_fraction: float = 0.01, seed: int = 0,
                       on_error: str = "raise") -> Path:
  """JSONL/Parquet contextual documents -> TFDS ArrayRecord dataset ``out_dir/name/1.0.0`` (returned).

  Every record is validated before anything is written (module docstring); preparing the same inputs with the
  same parameters again reuses the dataset, different ones into the same place is an error.
  """
  check_args(name, validation_fraction, on_error)
  files = records_lib.expand_inputs(inputs)
  params = {"kind": "contextual", "inputs": records_lib.input_params(files),
            "validation_fraction": validation_fraction, "seed": seed, "on_error": on_error}
  existing = prepared.existing_dataset(name, out_dir, params)
  if existing is not None:
    return existing
  t0 = time.perf_counter()
  stats: dict = {}
  split_counts = dict.fromkeys(SPLITS, 0)
  for _, _, rec in iter_contextual_records(files, on_error, stats):
    split_counts[document_split(rec, validation_fraction, seed)] += 1
  skipped = {r: stats[r] for r in REASONS if stats.get(r)}
  log.info("%s: %d good documents (%s), skipped %s, checked in %.1f s", name, stats["records"], split_counts,
           skipped or "none", time.perf_counter() - t0)
  index = {str(f): i for i, f in enumerate(files)}

  def examples(split: str):
    for source, line, rec in iter_contextual_records(files, on_error, log_skipped=False):
      if document_split(rec, validation_fraction, seed) == split:
        yield f"{index[source]}:{line}", example(rec, source, line)

  return _build(name, out_dir, params, skipped, split_counts, examples,
                f"Contextual documents (chunks + queries with gold chunks) from {len(files)} file(s).")


def prepare_wordnet_contextual(out_dir, validation_fraction: float = 0.05, seed: int = 0, limit: int | None = None,
                               name: str = "wordnet_contextual", wordnet_dir=None) -> Path:
  """The WordNet contextual set (:mod:`pplx_jax.stages.contextual.wordnet_docs`) as TFDS dataset ``out_dir/name/1.0.0``,
  split by synset like the other WordNet datasets (same `validation_fraction` and `seed` = same held-out synsets)."""
  check_args(name, validation_fraction)
  params = {"kind": "wordnet_contextual", "validation_fraction": validation_fraction, "seed": seed, "limit": limit}
  existing = prepared.existing_dataset(name, out_dir, params)
  if existing is not None:
    return existing
  records = wordnet_contextual_records(validation_fraction, seed, limit, wordnet_dir)
  split_counts, examples = prepared.split_records(records)

  return _build(name, out_dir, params, {}, split_counts, examples, WORDNET_DESCRIPTION)


WORDNET_DESCRIPTION = ("WordNet 3.0 synsets as contextual documents: a title chunk naming the synset, then chunks that "
                       "only say 'it' (kind, category, definition, examples), one query per aspect.")


def wordnet_contextual_records(validation_fraction: float, seed: int = 0, limit: int | None = None, wordnet_dir=None
                               ) -> list[tuple[str, str, dict]]:
  """(split, key, example) of every WordNet contextual document: what :func:`prepare_wordnet_contextual` writes,
  and the Beam path (``stages.beam_prepare``) too."""
  from pplx_jax.stages.contextual import wordnet_docs

  return [(wordnet.split_of(r["doc_id"], validation_fraction, seed), r["doc_id"],
           example(r, r["doc_id"], int(r["doc_id"].split(":")[1])))
          for r in wordnet_docs.documents(None, validation_fraction, seed, limit, wordnet_dir)]
