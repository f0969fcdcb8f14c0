"""Held-out retrieval sets for the contrastive stages: a split of pairs -> ``(queries, docs, qrels)``.

Docs are the split's distinct positives (and hard negatives), queries the distinct query texts, ``qrels[i]`` the
indices of query i's positives. :func:`wordnet_retrieval_set` is the held-out WordNet set every report uses (the
validation synsets of the pretraining split); :func:`pairs_retrieval_set` reads a prepared dataset or pair files;
:func:`load_retrieval_set` picks between them by name, as `pplx-jax eval --data` does.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pplx_jax.core import paths
from pplx_jax.data import prepared
from pplx_jax.data import records as records_lib
from pplx_jax.data.sources import wordnet
from pplx_jax.stages.contrastive.data import decode_pair
from pplx_jax.stages.contrastive.prepare import SPLITS, iter_pair_records, wordnet_pairs

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Reading prepared datasets


def read_pairs(path: str | os.PathLike | Sequence[str | os.PathLike], split: str = "validation",
               kind: str | None = None) -> list[dict]:
  """All records of a prepared dataset's `split`, or of JSONL/Parquet file(s) (then `split` is ignored and
  `kind` defaults to "triplet" when the first record has negatives)."""
  if isinstance(path, (str, os.PathLike)) and paths.as_path(path).is_dir():  # local or gs://
    source = prepared.load_split(path, split)
    out = []
    for s in range(0, len(source), 1024):
      out.extend(decode_pair(r) for r in prepared.read_records(source, list(range(s, min(len(source), s + 1024)))))
    return out
  if kind is None:
    first = next(_first_raw(records_lib.expand_inputs(path)), None)
    kind = "triplet" if isinstance(first, Mapping) and first.get("negatives") is not None else "pair"
  return [rec for _, _, rec in iter_pair_records(path, kind)]


def _first_raw(files: Sequence[Path]) -> Iterator[Any]:
  for path in files:
    if records_lib.file_format(path) == "parquet":
      import pyarrow.parquet as pq
      for batch in pq.ParquetFile(path).iter_batches(batch_size=1):
        yield batch.to_pylist()[0]
        return
    else:
      with records_lib.open_binary(path) as f:
        for raw in f:
          if raw.strip():
            try:
              yield json.loads(raw)
            except ValueError:
              pass
            return


# ---------------------------------------------------------------------------------------------
# Retrieval evaluation sets


def retrieval_set(records: Iterable[Mapping], max_queries: int | None = None, *, max_docs: int | None = None,
                  sample_seed: int = 0) -> tuple[list[str], list[str], list[list[int]]]:
  """Records ``{"query", "positive"[, "negatives"]}`` -> ``(queries, docs, qrels)``.

  Docs: the distinct positives and negatives (first-seen order); queries: the distinct query texts; ``qrels[i]``
  the sorted doc indices of all positives of query i (a query repeated with several positives has several
  relevant docs). ``max_queries``: a seeded random sample of the queries (original order kept);
  ``max_docs``: keep the sampled queries' relevant docs plus a seeded sample of the other docs, up to
  ``max_docs`` in all (never fewer than the relevant ones).
  """
  doc_index: dict[str, int] = {}
  query_index: dict[str, int] = {}
  rel: list[set[int]] = []

  def doc(text: str) -> int:
    return doc_index.setdefault(text, len(doc_index))

  for r in records:
    d = doc(r["positive"])
    for n in r.get("negatives") or ():
      doc(n)
    qi = query_index.setdefault(r["query"], len(query_index))
    if qi == len(rel):
      rel.append(set())
    rel[qi].add(d)
  queries, docs = list(query_index), list(doc_index)
  qrels = [sorted(s) for s in rel]
  return _sample(queries, docs, qrels, max_queries, max_docs, sample_seed)


def _sample(queries, docs, qrels, max_queries, max_docs, seed):
  rng = np.random.default_rng(seed)
  if max_queries is not None:
    if max_queries < 1:
      raise ValueError(f"max_queries must be positive, got {max_queries}")
    if max_queries < len(queries):
      keep = np.sort(rng.choice(len(queries), max_queries, replace=False))
      queries = [queries[i] for i in keep]
      qrels = [qrels[i] for i in keep]
  if max_docs is not None:
    if max_docs < 1:
      raise ValueError(f"max_docs must be positive, got {max_docs}")
    if max_docs < len(docs):
      needed = sorted({d for r in qrels for d in r})
      others = np.setdiff1d(np.arange(len(docs)), needed)
      extra = rng.permutation(others)[:max(0, max_docs - len(needed))]
      keep = np.sort(np.concatenate([np.asarray(needed, np.int64), extra.astype(np.int64)]))
      new = {int(old): i for i, old in enumerate(keep)}
      docs = [docs[i] for i in keep]
      qrels = [[new[d] for d in r] for r in qrels]
  return queries, docs, qrels


def wordnet_retrieval_set(split: str = "validation", max_queries: int | None = None, *,
                          max_docs: int | None = None, sample_seed: int = 0, validation_fraction: float = 0.05,
                          seed: int = 0, kinds: Sequence[str] = ("lemma", "example"), limit: int | None = None,
                          wordnet_dir: str | os.PathLike | None = None
                          ) -> tuple[list[str], list[str], list[list[int]]]:
  """Held-out WordNet retrieval: queries are the lemmas / example sentences of the `split`'s synsets
  (``wordnet.split_of(key, validation_fraction, seed)``, the pretraining and pair-training split), docs the
  split's distinct definitions, and each query's relevant docs the definitions of its synsets.

  See :func:`retrieval_set` for ``max_queries``/``max_docs``/``sample_seed``; ``limit`` reads only the first
  synsets (quick tests).
  """
  if split not in SPLITS:
    raise ValueError(f"WordNet split must be one of {SPLITS}, got {split!r}")
  records = (r for r in wordnet_pairs(kinds, limit, wordnet_dir)
             if wordnet.split_of(r["synset"], validation_fraction, seed) == split)
  queries, docs, qrels = retrieval_set(records, max_queries, max_docs=max_docs, sample_seed=sample_seed)
  if not queries:
    raise ValueError(f"the WordNet {split} split is empty (validation_fraction={validation_fraction}, "
                     f"limit={limit})")
  return queries, docs, qrels


def pairs_retrieval_set(path: str | os.PathLike, split: str = "validation", max_queries: int | None = None, *,
                        max_docs: int | None = None, sample_seed: int = 0
                        ) -> tuple[list[str], list[str], list[list[int]]]:
  """:func:`retrieval_set` of a prepared pairs/triplets dataset's `split` or of JSONL/Parquet pair files
  (all records; hard negatives join the corpus as non-relevant docs)."""
  records = read_pairs(path, split)
  if not records:
    raise ValueError(f"{path}: no records in split {split!r}")
  return retrieval_set(records, max_queries, max_docs=max_docs, sample_seed=sample_seed)


def local_retrieval_set(source: str, split: str = "validation", max_queries: int | None = None, *,
                        max_docs: int | None = None, sample_seed: int = 0, validation_fraction: float = 0.05,
                        seed: int = 0) -> tuple[list[str], list[str], list[list[int]]]:
  """Held-out retrieval on a local corpus: ``apt`` / ``pydoc`` pairs of the `split`'s keys (the pretraining and
  pair-training split), or ``manpages`` (every usable English man page: NAME description -> DESCRIPTION; man
  pages are never trained on, so `split` does not apply)."""
  if source == "manpages":
    from pplx_jax.data.sources import manpages
    records = list(manpages.read_pairs())
  else:
    from pplx_jax.data.sources import local
    from pplx_jax.stages.contrastive.prepare import local_pairs
    if split not in SPLITS:
      raise ValueError(f"{source} split must be one of {SPLITS}, got {split!r}")
    records = [r for r in local_pairs(source) if local.split_of(source, r["key"], validation_fraction, seed) == split]
  if not records:
    raise ValueError(f"the {source} {split} retrieval set is empty")
  return retrieval_set(records, max_queries, max_docs=max_docs, sample_seed=sample_seed)


LOCAL_EVAL_SOURCES = ("apt", "pydoc", "manpages")


def load_retrieval_set(data: str, split: str = "validation", *, max_queries: int | None = None,
                       max_docs: int | None = None, sample_seed: int = 0, validation_fraction: float = 0.05,
                       seed: int = 0, kinds: Sequence[str] = ("lemma", "example")):
  """(queries, docs, qrels) of ``--data``: "wordnet", "apt", "pydoc", "manpages" (held out: evaluation only), a
  prepared pairs dataset, or a pairs file."""
  if data in LOCAL_EVAL_SOURCES:
    return local_retrieval_set(data, split, max_queries, max_docs=max_docs, sample_seed=sample_seed,
                               validation_fraction=validation_fraction, seed=seed)
  if data == "wordnet":
    return wordnet_retrieval_set(split, max_queries, max_docs=max_docs, sample_seed=sample_seed,
                                 validation_fraction=validation_fraction, seed=seed, kinds=tuple(kinds))
  return pairs_retrieval_set(data, split, max_queries, max_docs=max_docs, sample_seed=sample_seed)
