"""Contrastive data (paper §4.1, §4.3): files (or WordNet) -> TFDS ArrayRecord datasets of query/positive pairs and
query/positive/hard-negative triplets (no TensorFlow)::

    prepare_pairs("pairs/*.jsonl", "data/", kind="pair")        # -> data/pairs/1.0.0
    prepare_pairs("mined.parquet", "data/", kind="triplet")     # -> data/triplets/1.0.0
    prepare_wordnet_pairs("data/")                              # -> data/wordnet_pairs/1.0.0
    prepare_wordnet_triplets("data/")                           # -> data/wordnet_triplets/1.0.0

Input records (``.jsonl`` lines, or ``.parquet`` rows; a trailing ``.gz`` is decompressed)::

    {"query": "...", "positive": "..."}                                   # kind="pair"
    {"query": "...", "positive": "...", "negatives": ["...", "..."]}      # kind="triplet"

Other fields are ignored. A bad record (invalid UTF-8 or JSON, a missing/null field, a non-string or empty
query/positive, ``negatives`` not a non-empty list of non-empty strings) raises
:class:`~pplx_jax.data.records.DataError` naming ``file:line`` (parquet: the 0-based row) before anything is
written, or is skipped and counted with ``on_error="skip"`` (``dataset_metadata(dir)["skipped"]``).
Dataset records are ``{"query", "positive", ["negatives"], "source", "line"}`` (strings as bytes, as TFDS
returns them). Splits: ``train``/``validation`` by a stable hash of seed and the *query* text, so a query
(and its duplicates) is never in both splits. WordNet pairs (lemma or example sentence -> definition) are
split by synset with :func:`pplx_jax.data.sources.wordnet.split_of` and the pretraining split's fraction and seed,
so validation synsets are unseen in pretraining and in pair training.

WordNet triplets: query = a lemma or an example sentence, positive = its synset's definition, negatives =
definitions of the synset's co-hyponyms (other children of the same hypernym): close in meaning, wrong answers —
hard negatives found by structure rather than mined by a retriever. Only synsets of the training split are used, so
the held-out WordNet evaluation stays unseen.
"""

from __future__ import annotations

import json
import logging
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pplx_jax.core import paths
from pplx_jax.data import prepared
from pplx_jax.data import records as records_lib
from pplx_jax.data.records import DataError
from pplx_jax.data.sources import wordnet


def triplet_records(validation_fraction: float = 0.05, seed: int = 0, num_negatives: int = 3,
                    limit: int | None = None):
  synsets = list(wordnet.read_synsets())
  children: dict[str, list[str]] = {}
  for s in synsets:
    for h in s.hypernym_keys:
      children.setdefault(h, []).append(s.key)
  by_key = {s.key: s for s in synsets}
  rng = random.Random(seed)
  n = 0
  for s in synsets:
    if wordnet.split_of(s.key, validation_fraction, seed) != "train":
      continue
    siblings = sorted({c for h in s.hypernym_keys for c in children.get(h, []) if c != s.key})
    negs = [by_key[c].definition for c in siblings if by_key[c].definition != s.definition]
    if not negs:
      continue
    rng.shuffle(negs)
    negs = negs[:num_negatives]
    for q in list(s.lemmas) + list(s.examples):
      yield {"query": q, "positive": s.definition, "negatives": negs}
      n += 1
      if limit is not None and n >= limit:
        return


def prepare_wordnet_triplets(out_dir, validation_fraction: float = 0.05, seed: int = 0, num_negatives: int = 3,
                             limit: int | None = None) -> Path:
  """A prepared triplet dataset (TFDS ArrayRecord) at out_dir/wordnet_triplets/1.0.0."""
  out_dir = paths.as_path(out_dir)
  existing = out_dir / "wordnet_triplets" / "1.0.0"
  if (existing / "dataset_info.json").is_file():
    return existing
  out_dir.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=None if paths.is_url(out_dir) else out_dir) as tmp:
    path = Path(tmp) / "wordnet_triplets.jsonl"
    with open(path, "w") as f:
      for r in triplet_records(validation_fraction, seed, num_negatives, limit):
        f.write(json.dumps(r) + "\n")
    # The synset split above already holds out evaluation synsets; this split only carves a small in-domain check.
    return prepare_pairs([str(path)], out_dir, kind="triplet", name="wordnet_triplets",
                                      validation_fraction=0.01, seed=seed)

log = logging.getLogger(__name__)

KINDS = ("pair", "triplet")
REASONS = ("invalid_utf8", "invalid_json", "missing_field", "non_string_field", "empty_text", "invalid_negatives")
SPLITS = prepared.SPLITS
VERSION = prepared.VERSION


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


def validate(obj, kind: str, fields: tuple[str, str, str], path, line: int) -> dict | DataError:
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
  for line_no, obj in records_lib.jsonl_objects(path):
    yield line_no, obj if isinstance(obj, DataError) else validate(obj, kind, fields, path, line_no)


def _parquet_records(path: Path, kind: str, fields) -> Iterator[tuple[int, dict | DataError]]:
  wanted = list(fields if kind == "triplet" else fields[:2])
  for row, obj in records_lib.parquet_rows(path, wanted, wanted):
    yield row, validate(obj, kind, fields, path, row)


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
  if on_error not in records_lib.ON_ERROR:
    raise ValueError(f"on_error must be one of {records_lib.ON_ERROR}, got {on_error!r}")
  stats = {} if stats is None else stats
  stats.setdefault("records", 0)
  fields = (query_field, positive_field, negatives_field)
  files = records_lib.expand_inputs(inputs)
  for path in files:
    fmt = records_lib.file_format(path)
    if fmt == "jsonl":
      reader = _jsonl_records
    elif fmt == "parquet":
      reader = _parquet_records
    else:
      raise DataError(path, None, "unsupported_format",
                      "pairs and triplets are read from .jsonl or .parquet files (optionally .gz)")
    for line_no, rec in reader(path, kind, fields):
      if isinstance(rec, DataError):
        records_lib.skip_or_raise(rec, on_error, stats, log_skipped)
        continue
      stats["records"] += 1
      yield str(path), line_no, rec


def _skipped(stats: Mapping) -> dict:
  return {r: stats[r] for r in REASONS if stats.get(r)}


# ---------------------------------------------------------------------------------------------
# TFDS builder


def features(kind: str) -> dict:
  import tensorflow_datasets as tfds

  out = {"query": tfds.features.Text(), "positive": tfds.features.Text()}
  if kind == "triplet":
    out["negatives"] = tfds.features.Sequence(tfds.features.Text())
  out.update({"source": tfds.features.Text(), "line": np.int64})
  return out


def check_args(name: str, validation_fraction: float, kind: str) -> None:
  prepared.check_name(name)
  prepared.check_fraction(validation_fraction)
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _build(name: str, kind: str, out_dir, params: dict, skipped: dict, split_counts: dict,
           examples: Callable[[str], Iterator[tuple[str, dict]]], description: str) -> Path:
  return prepared.build_dataset(name, out_dir, params, skipped, split_counts, examples, description, features(kind),
                                kind=kind)


def query_split(query: str, validation_fraction: float, seed: int) -> str:
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
  check_args(name, validation_fraction, kind)
  if on_error not in records_lib.ON_ERROR:
    raise ValueError(f"on_error must be one of {records_lib.ON_ERROR}, got {on_error!r}")
  files = records_lib.expand_inputs(inputs)
  fields = {"query_field": query_field, "positive_field": positive_field, "negatives_field": negatives_field}
  params = {
      "kind": kind,
      "inputs": records_lib.input_params(files),
      "fields": fields if kind == "triplet" else {k: fields[k] for k in ("query_field", "positive_field")},
      "validation_fraction": validation_fraction,
      "seed": seed,
      "on_error": on_error,
  }
  existing = prepared.existing_dataset(name, out_dir, params)
  if existing is not None:
    return existing

  t0 = time.perf_counter()
  stats: dict = {}
  split_counts = dict.fromkeys(SPLITS, 0)
  for _, _, rec in iter_pair_records(files, kind, on_error, stats, **fields):
    split_counts[query_split(rec["query"], validation_fraction, seed)] += 1
  skipped = _skipped(stats)
  log.info("%s: %d good records (%s), skipped %s, checked in %.1f s", name, stats.get("records", 0),
           split_counts, skipped or "none", time.perf_counter() - t0)
  index = {str(f): i for i, f in enumerate(files)}

  def examples(split: str):
    for source, line, rec in iter_pair_records(files, kind, on_error, log_skipped=False, **fields):
      if query_split(rec["query"], validation_fraction, seed) == split:
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
  check_args(name, validation_fraction, "pair")
  kinds = list(kinds)
  params = {"kind": "wordnet_pairs", "validation_fraction": validation_fraction, "seed": seed, "kinds": kinds,
            "limit": limit}
  existing = prepared.existing_dataset(name, out_dir, params)
  if existing is not None:
    return existing
  records = wordnet_pair_records(kinds, validation_fraction, seed, limit, wordnet_dir)
  split_counts, examples = prepared.split_records(records)

  return _build(name, "pair", out_dir, params, {}, split_counts, examples, wordnet_pairs_description(kinds))


def wordnet_pairs_description(kinds: Sequence[str]) -> str:
  return f"WordNet 3.0 pairs ({', '.join(kinds)} -> definition), split by synset."


def wordnet_pair_records(kinds: Sequence[str], validation_fraction: float, seed: int = 0, limit: int | None = None,
                         wordnet_dir=None) -> list[tuple[str, str, dict]]:
  """(split, key, example) of every WordNet pair: what :func:`prepare_wordnet_pairs` writes, and the Beam path
  (``stages.beam_prepare``) too."""
  split_of: dict[str, str] = {}
  out = []
  for i, r in enumerate(wordnet_pairs(kinds, limit, wordnet_dir)):
    s = split_of.setdefault(r["synset"], wordnet.split_of(r["synset"], validation_fraction, seed))
    out.append((s, f"{i}", {"query": r["query"], "positive": r["positive"], "source": r["synset"],
                            "line": int(r["synset"].split(":")[1])}))
  return out


# ---------------------------------------------------------------------------------------------
# Local corpora besides WordNet: apt's package descriptions, the standard library's docstrings

LOCAL_PAIR_SOURCES = ("apt", "pydoc")


def local_pairs(source: str, kinds: Sequence[str] | None = None, path=None, on_error: str = "raise",
                stats: dict | None = None) -> list[dict]:
  """``{"query", "positive", "key", "group", "kind"}`` of a local corpus (:mod:`pplx_jax.data.sources.apt`,
  :mod:`pplx_jax.data.sources.pydoc`), all its pair kinds by default."""
  if source == "apt":
    from pplx_jax.data.sources import apt
    return list(apt.retrieval_pairs(apt.read_packages(path, on_error, stats), kinds or apt.PAIR_KINDS))
  if source == "pydoc":
    from pplx_jax.data.sources import pydoc
    return list(pydoc.retrieval_pairs(pydoc.read_docs(path, on_error, stats), kinds or pydoc.PAIR_KINDS))
  raise ValueError(f"unknown local pair source {source!r}; known: {', '.join(LOCAL_PAIR_SOURCES)} (and wordnet)")


def local_pair_records(source: str, validation_fraction: float, seed: int = 0, limit: int | None = None,
                       kinds: Sequence[str] | None = None, path=None, on_error: str = "raise",
                       stats: dict | None = None) -> list[tuple[str, str, dict]]:
  """(split, key, example) of a local corpus's pairs, split by the record's key
  (:func:`pplx_jax.data.sources.local.split_of`, the pretraining split)."""
  from pplx_jax.data.sources import local
  pairs = local_pairs(source, kinds, path, on_error, stats)[:limit]
  return [(local.split_of(source, r["key"], validation_fraction, seed), f"{i}",
           {"query": r["query"], "positive": r["positive"], "source": f"{source}:{r['key']}", "line": i})
          for i, r in enumerate(pairs)]


def local_triplet_records(source: str, validation_fraction: float, seed: int = 0, num_negatives: int = 3,
                          limit: int | None = None, path=None, on_error: str = "raise", stats: dict | None = None
                          ) -> list[tuple[str, str, dict]]:
  """Training-split triplets of a local corpus: negatives are positives of other records of the same group (an
  apt Section such as ``games``; a pydoc module) and pair kind, not equal to the record's own: near in topic,
  wrong answers. Records whose group has no other positive are left out."""
  from pplx_jax.data.sources import local
  pairs = [r for r in local_pairs(source, None, path, on_error, stats)
           if local.split_of(source, r["key"], validation_fraction, seed) == "train"]
  by_group: dict[tuple[str, str], list[str]] = {}
  for r in pairs:
    by_group.setdefault((r["group"], r["kind"]), []).append(r["positive"])
  rng = random.Random(seed)
  out = []
  for i, r in enumerate(pairs):
    pool = by_group[(r["group"], r["kind"])]
    # Sample from the group without building a list of all others: groups have up to thousands of members.
    negs: list[str] = []
    for j in rng.sample(range(len(pool)), min(len(pool), 4 * num_negatives)):
      if pool[j] != r["positive"] and pool[j] not in negs:
        negs.append(pool[j])
      if len(negs) == num_negatives:
        break
    if not negs:
      continue
    out.append(("train", f"{i}", {"query": r["query"], "positive": r["positive"], "negatives": negs,
                                  "source": f"{source}:{r['key']}", "line": i}))
    if limit is not None and len(out) >= limit:
      break
  return out


def prepare_local_pairs(out_dir, source: str, validation_fraction: float = 0.05, seed: int = 0,
                        limit: int | None = None, kind: str = "pair", num_negatives: int = 3,
                        kinds: Sequence[str] | None = None, name: str | None = None, on_error: str = "raise"
                        ) -> Path:
  """A local corpus's pairs (``kind="pair"``) or training-split triplets (``"triplet"``) as TFDS dataset
  ``out_dir/NAME/1.0.0`` (default name ``SOURCE_pairs`` / ``SOURCE_triplets``). Pairs are split by key with the
  pretraining split's fraction and seed; triplets use training keys only and carve a 1% in-domain check."""
  name = name or f"{source}_{'pairs' if kind == 'pair' else 'triplets'}"
  check_args(name, validation_fraction, kind)
  if on_error not in records_lib.ON_ERROR:
    raise ValueError(f"on_error must be one of {records_lib.ON_ERROR}, got {on_error!r}")
  params = {"kind": f"{source}_{kind}", "validation_fraction": validation_fraction, "seed": seed, "limit": limit,
            "kinds": list(kinds) if kinds else None, "on_error": on_error}
  if kind == "triplet":
    params["num_negatives"] = num_negatives
  existing = prepared.existing_dataset(name, out_dir, params)
  if existing is not None:
    return existing
  stats: dict = {}
  if kind == "pair":
    records = local_pair_records(source, validation_fraction, seed, limit, kinds, on_error=on_error, stats=stats)
  else:
    records = [(query_split(ex["query"], 0.01, seed), key, ex) for _, key, ex in
               local_triplet_records(source, validation_fraction, seed, num_negatives, limit, on_error=on_error,
                                     stats=stats)]
  split_counts, examples = prepared.split_records(records)
  skipped = {r: n for r, n in stats.items() if r not in ("stanzas", "packages", "with_long", "files", "docs")}
  log.info("%s: %d %ss (%s), skipped %s", name, len(records), kind, split_counts, skipped or "none")

  what = {"apt": "Debian package descriptions (short -> long, name -> short)",
          "pydoc": "Python standard library docstrings (summary -> code, summary -> rest of the docstring)"}[source]
  return _build(name, kind, out_dir, params, skipped, split_counts, examples, f"{what}, {kind}s, split by key.")
