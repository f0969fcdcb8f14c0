"""Contrastive data (paper §4.1, §4.3): query/positive pairs and query/positive/hard-negative triplets.

Files -> TFDS ArrayRecord datasets (like :mod:`pplx_jax.data.builders`, no TensorFlow)::

    prepare_pairs("pairs/*.jsonl", "data/", kind="pair")        # -> data/pairs/1.0.0
    prepare_pairs("mined.parquet", "data/", kind="triplet")     # -> data/triplets/1.0.0
    prepare_wordnet_pairs("data/")                              # -> data/wordnet_pairs/1.0.0

Input records (``.jsonl`` lines, or ``.parquet`` rows; a trailing ``.gz`` is decompressed)::

    {"query": "...", "positive": "..."}                                   # kind="pair"
    {"query": "...", "positive": "...", "negatives": ["...", "..."]}      # kind="triplet"

Other fields are ignored. A bad record (invalid UTF-8 or JSON, a missing/null field, a non-string or empty
query/positive, ``negatives`` not a non-empty list of non-empty strings) raises
:class:`~pplx_jax.data.text.DataError` naming ``file:line`` (parquet: the 0-based row) before anything is
written, or is skipped and counted with ``on_error="skip"`` (``dataset_metadata(dir)["skipped"]``).
Dataset records are ``{"query", "positive", ["negatives"], "source", "line"}`` (strings as bytes, as TFDS
returns them). Splits: ``train``/``validation`` by a stable hash of seed and the *query* text, so a query
(and its duplicates) is never in both splits. WordNet pairs (lemma or example sentence -> definition) are
split by synset with :func:`pplx_jax.data.wordnet.split_of` and the pretraining split's fraction and seed,
so validation synsets are unseen in pretraining and in pair training.

Evaluation sets (:func:`wordnet_retrieval_set`, :func:`pairs_retrieval_set`) turn a split into
``(queries, docs, qrels)``: docs are the split's distinct positives (and hard negatives), queries the distinct
query texts, ``qrels[i]`` the indices of query i's positives.

Training batches (:class:`PairPipeline`): grain, a deterministic mixture of datasets by weight, this
process's shard, per-epoch shuffles, a JSON-serialisable iterator state; each batch is
``{"q_ids", "q_mask"} [B, query_len]``, ``{"d_ids", "d_mask"} [B, doc_len]`` (int32, 1 = real token), for
triplets ``{"n_ids", "n_mask"} [B, K, negative_len]``, and ``"dataset"`` [B] (which mixture component).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pplx_jax.data import builders
from pplx_jax.data import text as text_lib
from pplx_jax.data import wordnet
from pplx_jax.data.pipeline import CheckpointableIterator, _shard, process_rows
from pplx_jax.data.text import DataError

log = logging.getLogger(__name__)

__all__ = [
    "KINDS",
    "REASONS",
    "iter_pair_records",
    "prepare_pairs",
    "prepare_wordnet_pairs",
    "wordnet_pairs",
    "read_pairs",
    "retrieval_set",
    "wordnet_retrieval_set",
    "pairs_retrieval_set",
    "PairPipeline",
]

KINDS = ("pair", "triplet")
REASONS = ("invalid_utf8", "invalid_json", "missing_field", "non_string_field", "empty_text", "invalid_negatives")
SPLITS = builders.SPLITS
VERSION = builders.VERSION
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


# ---------------------------------------------------------------------------------------------
# Reading and validating records


def _decode(value, field: str, path, line: int) -> str | DataError:
  if isinstance(value, bytes):
    try:
      value = value.decode("utf-8")
    except UnicodeDecodeError as e:
      return DataError(path, line, "invalid_utf8", f"field {field!r}: invalid UTF-8 ({e.reason} at byte {e.start})")
  return value


def _string_field(obj: Mapping, field: str, path, line: int) -> str | DataError:
  value = obj.get(field)
  if value is None:
    return DataError(path, line, "missing_field", f"record has no {field!r} field")
  value = _decode(value, field, path, line)
  if isinstance(value, DataError):
    return value
  if not isinstance(value, str):
    return DataError(path, line, "non_string_field", f"field {field!r} is a {type(value).__name__}, not a string")
  if not value.strip():
    return DataError(path, line, "empty_text", f"field {field!r} is empty")
  return value


def _negatives_field(obj: Mapping, field: str, path, line: int) -> list[str] | DataError:
  value = obj.get(field)
  if value is None:
    return DataError(path, line, "missing_field", f"record has no {field!r} field (kind='triplet')")
  if isinstance(value, np.ndarray):
    value = value.tolist()
  if not isinstance(value, (list, tuple)):
    return DataError(path, line, "invalid_negatives",
                     f"field {field!r} is a {type(value).__name__}, expected a non-empty list of strings")
  if not value:
    return DataError(path, line, "invalid_negatives", f"field {field!r} is an empty list")
  out = []
  for i, v in enumerate(value):
    v = _decode(v, f"{field}[{i}]", path, line)
    if isinstance(v, DataError):
      return v
    if not isinstance(v, str):
      return DataError(path, line, "invalid_negatives", f"{field}[{i}] is a {type(v).__name__}, not a string")
    if not v.strip():
      return DataError(path, line, "invalid_negatives", f"{field}[{i}] is empty")
    out.append(v)
  return out


def _validate(obj, kind: str, fields: tuple[str, str, str], path, line: int) -> dict | DataError:
  if not isinstance(obj, Mapping):
    return DataError(path, line, "invalid_json", f"expected a JSON object, got {type(obj).__name__}")
  qf, pf, nf = fields
  rec: dict[str, Any] = {}
  for key, field in (("query", qf), ("positive", pf)):
    v = _string_field(obj, field, path, line)
    if isinstance(v, DataError):
      return v
    rec[key] = v
  if kind == "triplet":
    v = _negatives_field(obj, nf, path, line)
    if isinstance(v, DataError):
      return v
    rec["negatives"] = v
  return rec


def _jsonl_records(path: Path, kind: str, fields) -> Iterator[tuple[int, dict | DataError]]:
  for line_no, obj in text_lib.jsonl_objects(path):
    yield line_no, obj if isinstance(obj, DataError) else _validate(obj, kind, fields, path, line_no)


def _parquet_records(path: Path, kind: str, fields) -> Iterator[tuple[int, dict | DataError]]:
  wanted = list(fields if kind == "triplet" else fields[:2])
  for row, obj in text_lib.parquet_rows(path, wanted, wanted):
    yield row, _validate(obj, kind, fields, path, row)


def iter_pair_records(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    kind: str = "pair",
    on_error: str = "raise",
    stats: dict | None = None,
    log_skipped: bool = True,
    query_field: str = "query",
    positive_field: str = "positive",
    negatives_field: str = "negatives",
) -> Iterator[tuple[str, int, dict]]:
  """Yield ``(file, line, {"query", "positive"[, "negatives"]})`` for every good record, in order.

  ``line`` is 1-based for JSONL, the 0-based row for parquet. ``stats`` (updated in place) counts
  ``records`` and each skipped reason. Files other than ``.jsonl``/``.parquet`` (optionally ``.gz``) raise.
  """
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  if on_error not in text_lib.ON_ERROR:
    raise ValueError(f"on_error must be one of {text_lib.ON_ERROR}, got {on_error!r}")
  stats = {} if stats is None else stats
  stats.setdefault("records", 0)
  fields = (query_field, positive_field, negatives_field)
  files = text_lib.expand_inputs(inputs)
  for path in files:
    fmt = text_lib.file_format(path)
    if fmt == "jsonl":
      reader = _jsonl_records
    elif fmt == "parquet":
      reader = _parquet_records
    else:
      raise DataError(path, None, "unsupported_format",
                      "pairs and triplets are read from .jsonl or .parquet files (optionally .gz)")
    for line_no, rec in reader(path, kind, fields):
      if isinstance(rec, DataError):
        text_lib.skip_or_raise(rec, on_error, stats, log_skipped)
        continue
      stats["records"] += 1
      yield str(path), line_no, rec


def _skipped(stats: Mapping) -> dict:
  return {r: stats[r] for r in REASONS if stats.get(r)}


# ---------------------------------------------------------------------------------------------
# TFDS builder


def _features(kind: str) -> dict:
  import tensorflow_datasets as tfds

  features = {"query": tfds.features.Text(), "positive": tfds.features.Text()}
  if kind == "triplet":
    features["negatives"] = tfds.features.Sequence(tfds.features.Text())
  features.update({"source": tfds.features.Text(), "line": np.int64})
  return features


def _check_args(name: str, validation_fraction: float, kind: str) -> None:
  if not _NAME_RE.match(name):
    raise ValueError(f"dataset name {name!r} is not valid: use lowercase letters, digits and '_', "
                     "starting with a letter")
  if not 0.0 <= validation_fraction < 1.0:
    raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _build(name: str, kind: str, out_dir, params: dict, skipped: dict, split_counts: dict,
           examples: Callable[[str], Iterator[tuple[str, dict]]], description: str) -> Path:
  return builders.build_dataset(name, out_dir, params, skipped, split_counts, examples, description, _features(kind),
                                kind=kind)


def _split(query: str, validation_fraction: float, seed: int) -> str:
  return wordnet.split_of(query, validation_fraction, seed)


def prepare_pairs(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    kind: str = "pair",
    name: str | None = None,
    validation_fraction: float = 0.01,
    seed: int = 0,
    on_error: str = "raise",
    query_field: str = "query",
    positive_field: str = "positive",
    negatives_field: str = "negatives",
) -> Path:
  """JSONL/Parquet pairs or triplets -> TFDS ArrayRecord dataset ``out_dir/name/1.0.0`` (returned).

  `name` defaults to ``"pairs"`` / ``"triplets"``. Every record is validated before anything is written
  (see the module docstring); preparing the same inputs with the same parameters again reuses the dataset.
  """
  name = name or {"pair": "pairs", "triplet": "triplets"}.get(kind, "pairs")
  _check_args(name, validation_fraction, kind)
  if on_error not in text_lib.ON_ERROR:
    raise ValueError(f"on_error must be one of {text_lib.ON_ERROR}, got {on_error!r}")
  files = text_lib.expand_inputs(inputs)
  fields = {"query_field": query_field, "positive_field": positive_field, "negatives_field": negatives_field}
  params = {
      "kind": kind,
      "inputs": [{"path": str(f.resolve()), "bytes": f.stat().st_size} for f in files],
      "fields": fields if kind == "triplet" else {k: fields[k] for k in ("query_field", "positive_field")},
      "validation_fraction": validation_fraction,
      "seed": seed,
      "on_error": on_error,
  }
  existing = builders.existing_dataset(name, out_dir, params)
  if existing is not None:
    return existing

  t0 = time.perf_counter()
  stats: dict = {}
  split_counts = dict.fromkeys(SPLITS, 0)
  for _, _, rec in iter_pair_records(files, kind, on_error, stats, **fields):
    split_counts[_split(rec["query"], validation_fraction, seed)] += 1
  skipped = _skipped(stats)
  log.info("%s: %d good records (%s), skipped %s, checked in %.1f s", name, stats.get("records", 0),
           split_counts, skipped or "none", time.perf_counter() - t0)
  index = {str(f): i for i, f in enumerate(files)}

  def examples(split: str):
    for source, line, rec in iter_pair_records(files, kind, on_error, log_skipped=False, **fields):
      if _split(rec["query"], validation_fraction, seed) == split:
        yield f"{index[source]}:{line}", {**rec, "source": source, "line": line}

  description = f"{kind.capitalize()}s (query, positive{', negatives' if kind == 'triplet' else ''}) from " \
                f"{len(files)} file(s)."
  return _build(name, kind, out_dir, params, skipped, split_counts, examples, description)


# ---------------------------------------------------------------------------------------------
# WordNet pairs


def wordnet_pairs(kinds: Sequence[str] = ("lemma", "example"), limit: int | None = None,
                  wordnet_dir: str | os.PathLike | None = None) -> Iterator[dict]:
  """:func:`wordnet.retrieval_pairs` restricted to `kinds`, over the first `limit` synsets (file order)."""
  kinds = tuple(kinds)
  bad = [k for k in kinds if k not in ("lemma", "example")]
  if bad or not kinds:
    raise ValueError(f"WordNet pair kinds must be some of ('lemma', 'example'), got {kinds}")
  for n, syn in enumerate(wordnet.read_synsets(wordnet_dir)):
    if limit is not None and n >= limit:
      break
    if not syn.definition:
      continue
    if "lemma" in kinds:
      for lemma in syn.lemmas:
        yield {"query": lemma, "positive": syn.definition, "synset": syn.key, "kind": "lemma"}
    if "example" in kinds:
      for ex in syn.examples:
        yield {"query": ex, "positive": syn.definition, "synset": syn.key, "kind": "example"}


def prepare_wordnet_pairs(
    out_dir: str | os.PathLike,
    validation_fraction: float = 0.05,
    seed: int = 0,
    kinds: Sequence[str] = ("lemma", "example"),
    limit: int | None = None,
    name: str = "wordnet_pairs",
    wordnet_dir: str | os.PathLike | None = None,
) -> Path:
  """WordNet pairs (lemma / example sentence -> definition) as TFDS dataset ``out_dir/name/1.0.0``.

  Split by synset with ``wordnet.split_of(key, validation_fraction, seed)``: use the fraction and seed of
  ``prepare_wordnet`` (pretraining), so validation synsets are unseen in both stages. ``source`` is the
  synset key, ``line`` its byte offset; ``limit`` keeps the first synsets (for quick tests).
  """
  _check_args(name, validation_fraction, "pair")
  kinds = list(kinds)
  params = {"kind": "wordnet_pairs", "validation_fraction": validation_fraction, "seed": seed, "kinds": kinds,
            "limit": limit}
  existing = builders.existing_dataset(name, out_dir, params)
  if existing is not None:
    return existing
  records = list(wordnet_pairs(kinds, limit, wordnet_dir))
  split_of: dict[str, str] = {}
  split_counts = dict.fromkeys(SPLITS, 0)
  for r in records:
    s = split_of.setdefault(r["synset"], wordnet.split_of(r["synset"], validation_fraction, seed))
    split_counts[s] += 1

  def examples(split: str):
    for i, r in enumerate(records):
      if split_of[r["synset"]] == split:
        yield f"{i}", {"query": r["query"], "positive": r["positive"], "source": r["synset"],
                       "line": int(r["synset"].split(":")[1])}

  description = f"WordNet 3.0 pairs ({', '.join(kinds)} -> definition), split by synset."
  return _build(name, "pair", out_dir, params, {}, split_counts, examples, description)


# ---------------------------------------------------------------------------------------------
# Reading prepared datasets


def _text(v) -> str:
  if isinstance(v, np.ndarray) and v.ndim == 0:
    v = v.item()
  return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _record(raw) -> dict:
  """A prepared-dataset record (bytes fields) or an in-memory dict -> {"query", "positive"[, "negatives"]}."""
  rec = {"query": _text(raw["query"]), "positive": _text(raw["positive"])}
  negs = raw.get("negatives") if isinstance(raw, Mapping) else None
  if negs is not None:
    rec["negatives"] = [_text(n) for n in (negs.tolist() if isinstance(negs, np.ndarray) else negs)]
  return rec


def _read(source, indices: list[int]) -> list:
  getitems = getattr(source, "__getitems__", None)
  return list(getitems(indices)) if getitems is not None else [source[i] for i in indices]


def read_pairs(path: str | os.PathLike | Sequence[str | os.PathLike], split: str = "validation",
               kind: str | None = None) -> list[dict]:
  """All records of a prepared dataset's `split`, or of JSONL/Parquet file(s) (then `split` is ignored and
  `kind` defaults to "triplet" when the first record has negatives)."""
  if isinstance(path, (str, os.PathLike)) and Path(path).is_dir():
    source = builders.load_split(path, split)
    out = []
    for s in range(0, len(source), 1024):
      out.extend(_record(r) for r in _read(source, list(range(s, min(len(source), s + 1024)))))
    return out
  if kind is None:
    first = next(_first_raw(text_lib.expand_inputs(path)), None)
    kind = "triplet" if isinstance(first, Mapping) and first.get("negatives") is not None else "pair"
  return [rec for _, _, rec in iter_pair_records(path, kind)]


def _first_raw(files: Sequence[Path]) -> Iterator[Any]:
  for path in files:
    if text_lib.file_format(path) == "parquet":
      import pyarrow.parquet as pq
      for batch in pq.ParquetFile(path).iter_batches(batch_size=1):
        yield batch.to_pylist()[0]
        return
    else:
      with text_lib.open_binary(path) as f:
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


# ---------------------------------------------------------------------------------------------
# Training batches

STATE_FORMAT = "pplx_jax.pair_pipeline/1"


class _Tag:
  """record index -> (dataset index, record index)."""

  def __init__(self, dataset: int):
    self.dataset = dataset

  def __call__(self, i):
    return self.dataset, int(i)


def _pad(rows: Sequence[Sequence[int]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  ids = np.full((len(rows), length), pad_id, np.int32)
  mask = np.zeros((len(rows), length), np.int32)
  for i, r in enumerate(rows):
    r = r[:length]
    ids[i, :len(r)] = r
    mask[i, :len(r)] = 1
  return ids, mask


class _Collate:
  """[(dataset, index)] -> one batch of token ids and masks (records read with one batched read per dataset)."""

  def __init__(self, sources, tokenizer, kind: str, query_len: int, doc_len: int, negative_len: int,
               num_negatives: int):
    self._sources = sources
    self._tok = tokenizer
    self._kind = kind
    self._lens = (query_len, doc_len, negative_len)
    self._k = num_negatives

  def __call__(self, items: Sequence[tuple[int, int]]) -> dict[str, np.ndarray]:
    records: list[dict | None] = [None] * len(items)
    by_dataset: dict[int, list[int]] = {}
    for pos, (ds, _) in enumerate(items):
      by_dataset.setdefault(ds, []).append(pos)
    for ds, positions in by_dataset.items():
      raws = _read(self._sources[ds], [items[p][1] for p in positions])
      for p, raw in zip(positions, raws):
        records[p] = _record(raw)
    q_len, d_len, n_len = self._lens
    pad = self._tok.pad_id
    q_ids, q_mask = _pad(self._tok.encode_batch([r["query"] for r in records]), q_len, pad)
    d_ids, d_mask = _pad(self._tok.encode_batch([r["positive"] for r in records]), d_len, pad)
    batch = {"q_ids": q_ids, "q_mask": q_mask, "d_ids": d_ids, "d_mask": d_mask,
             "dataset": np.asarray([ds for ds, _ in items], np.int32)}
    if self._kind == "triplet":
      negs = []
      for pos, r in enumerate(records):
        n = r.get("negatives")
        if not n:
          ds, idx = items[pos]
          raise ValueError(f"dataset {ds} record {idx} has no negatives (kind='triplet' needs them)")
        negs.extend(n[j % len(n)] for j in range(self._k))  # the first K, cycled when there are fewer
      n_ids, n_mask = _pad(self._tok.encode_batch(negs), n_len, pad)
      batch["n_ids"] = n_ids.reshape(len(records), self._k, n_len)
      batch["n_mask"] = n_mask.reshape(len(records), self._k, n_len)
    return batch


def _component_seed(seed: int, i: int) -> int:
  return int(np.random.SeedSequence([seed, i]).generate_state(1)[0])


class PairPipeline(CheckpointableIterator):
  """Iterator of contrastive training batches for one process (format: the module docstring).

  Args:
    sources: one random-access dataset or a list of them (``builders.load_split(dir, "train")`` of a
      prepared pairs/triplets dataset, or any sequence of dicts with "query", "positive"[, "negatives"]).
    tokenizer: a :class:`pplx_jax.tokenizers.Tokenizer`; texts are encoded as ``embed`` encodes them
      (``encode_batch``), truncated to the lengths below and padded with ``pad_id`` (mask 0).
    batch_size: examples per batch in this process. Incomplete final batches are dropped.
    weights: mixture weights, one per source (default: proportional to the sources' sizes). The mixture is
      grain's deterministic ``MapDataset.mix``: source i supplies a fraction weights[i]/sum(weights) of every
      long enough stretch of examples.
    kind: "pair" or "triplet" (triplets take the first ``num_negatives`` negatives of a record, cycling
      when it has fewer).
    seed: shuffle seed; source i, epoch e uses a permutation derived from (seed, i) and e.
    num_epochs: passes over each source; None repeats forever. With several finite sources the mixture
      ends when the first source (scaled by its weight) runs out.
    shard_index, shard_count: this process's rows ``[shard_index * batch_size, (shard_index + 1) * batch_size)`` of
      every global batch of ``batch_size * shard_count`` examples (default: ``jax.process_index()`` /
      ``jax.process_count()``); it reads only their records. The global batches, and the iterator state, are the
      same for any number of processes.
    read_threads: grain threads reading and tokenising batches.
  """

  _state_format = STATE_FORMAT

  def __init__(self, sources, tokenizer, batch_size: int, *, weights: Sequence[float] | None = None,
               kind: str = "pair", query_len: int = 64, doc_len: int = 256, negative_len: int | None = None,
               num_negatives: int = 1, seed: int = 0, num_epochs: int | None = None,
               shard_index: int | None = None, shard_count: int | None = None, read_threads: int = 4,
               prefetch_batches: int = 2):
    import grain

    if isinstance(sources, Sequence) and sources and not isinstance(sources[0], Mapping) and hasattr(
        sources[0], "__len__"):
      sources = list(sources)
    else:
      sources = [sources]
    if kind not in KINDS:
      raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    negative_len = doc_len if negative_len is None else negative_len
    if min(batch_size, query_len, doc_len, negative_len, num_negatives) < 1:
      raise ValueError("batch_size, query_len, doc_len, negative_len and num_negatives must be positive")
    if num_epochs is not None and num_epochs < 1:
      raise ValueError(f"num_epochs must be positive or None, got {num_epochs}")
    if not 0 <= seed < 2**32:
      raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    sizes = [len(s) for s in sources]
    if weights is None:
      weights = [float(n) for n in sizes]
    weights = [float(w) for w in weights]
    if len(weights) != len(sources):
      raise ValueError(f"{len(weights)} mixture weights for {len(sources)} datasets")
    if any(not w > 0 for w in weights):
      raise ValueError(f"mixture weights must be positive, got {weights}")
    shard = None
    for n in sizes:
      shard = _shard(n, shard_index, shard_count)
    shard_index, shard_count = shard
    self.batch_size, self.kind = batch_size, kind
    self.shard_index, self.shard_count = shard_index, shard_count
    total = sum(weights)
    self.weights = [w / total for w in weights]
    # The state is the position in the global stream: the same in every process, and valid for another count.
    self._config = {
        "num_records": sizes, "weights": self.weights, "global_batch_size": batch_size * shard_count, "kind": kind,
        "query_len": query_len, "doc_len": doc_len, "negative_len": negative_len, "num_negatives": num_negatives,
        "seed": seed, "num_epochs": num_epochs, "vocab_size": tokenizer.vocab_size,
    }
    parts = []
    for i, n in enumerate(sizes):
      ds = grain.MapDataset.range(n).shuffle(seed=_component_seed(seed, i))
      if num_epochs != 1:
        ds = ds.repeat(num_epochs)
      parts.append(ds.map(_Tag(i)))
    ds = parts[0] if len(parts) == 1 else grain.MapDataset.mix(parts, self.weights)
    collate = _Collate(sources, tokenizer, kind, query_len, doc_len, negative_len, num_negatives)
    ds = process_rows(ds, batch_size, shard_index, shard_count).map(collate)
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                              prefetch_buffer_size=max(prefetch_batches, read_threads)))
    self._start(ds)

