"""Held-out contextual retrieval sets (ConTEB protocol): documents of chunks + queries -> ``(queries, docs,
qrels)``.

Every query is scored against every chunk of the collection; ``qrels[i]`` are the indices (into the flattened chunk
list) of query i's gold chunks; identical query texts are merged into one query with all their gold chunks relevant.
:func:`load_retrieval_set` reads "wordnet" (the WordNet contextual set), a prepared dataset or document files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping

import numpy as np

from pplx_jax.core import paths
from pplx_jax.data import prepared
from pplx_jax.stages.contextual.data import decode_document
from pplx_jax.stages.contextual.prepare import iter_contextual_records

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Reading prepared datasets and files


def read_documents(path, split: str = "validation", require_queries: bool = False) -> list[dict]:
  """All documents of a prepared dataset's `split`, or of JSONL/Parquet file(s) (then `split` is ignored; a document
  without queries is accepted as a distractor unless `require_queries`)."""
  if isinstance(path, (str, os.PathLike)) and paths.as_path(path).is_dir():  # local or gs://
    source = prepared.load_split(path, split)
    out = []
    for s in range(0, len(source), 1024):
      out.extend(decode_document(r) for r in prepared.read_records(source, list(range(s, min(len(source), s + 1024)))))
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
  from pplx_jax.stages.contextual import wordnet_docs

  records = list(wordnet_docs.documents(split, validation_fraction, seed, limit))
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
