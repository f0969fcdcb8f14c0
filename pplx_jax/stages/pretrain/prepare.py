"""Stage-1 data: the user's text files (``.txt``, ``.jsonl``, ``.parquet``) or WordNet -> a tokenizer-independent
TFDS ArrayRecord dataset with train and validation splits (`pplx-jax prepare`).

Pass 1 validates every record before anything is written (a bad record raises naming ``file:line``, or is skipped
and counted with ``on_error="skip"``); pass 2 writes. A user document's split is a stable hash of seed and text;
WordNet synsets are split with :func:`pplx_jax.data.sources.wordnet.split_of`, the split every later stage and the
held-out evaluation reuse.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pplx_jax.data import records as records_lib
from pplx_jax.data.prepared import (
  SPLITS,
  build_dataset,
  check_fraction,
  check_name,
  existing_dataset,
  split_records,
)
from pplx_jax.data.sources import local, wordnet

log = logging.getLogger(__name__)


def text_split(text: str, validation_fraction: float, seed: int = 0) -> str:
  """``"train"`` or ``"validation"`` for a user document (stable hash of seed and text)."""
  return wordnet.split_of(text, validation_fraction, seed)


def text_features() -> dict:
  import tensorflow_datasets as tfds
  return {"text": tfds.features.Text(), "source": tfds.features.Text(), "line": np.int64}


# ---------------------------------------------------------------------------------------------
# User text


def prepare_text_dataset(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    name: str = "text",
    validation_fraction: float = 0.01,
    seed: int = 0,
    on_error: str = "raise",
    field: str = "text",
) -> Path:
  """Write ``.txt``/``.jsonl``/``.parquet`` documents as TFDS ArrayRecord dataset ``out_dir/name/1.0.0``.

  Returns that directory (what :func:`load_split` and ``tfds.builder_from_directory`` read). Bad records
  raise :class:`~pplx_jax.data.records.DataError` (``file:line``) or, with ``on_error="skip"``, are
  skipped and counted (``dataset_metadata(dir)["skipped"]``).
  """
  check_name(name)
  check_fraction(validation_fraction)
  if on_error not in records_lib.ON_ERROR:
    raise ValueError(f"on_error must be one of {records_lib.ON_ERROR}, got {on_error!r}")
  files = records_lib.expand_inputs(inputs)
  params = {
      "kind": "text",
      "inputs": records_lib.input_params(files),
      "field": field,
      "validation_fraction": validation_fraction,
      "seed": seed,
      "on_error": on_error,
  }
  existing = existing_dataset(name, out_dir, params)
  if existing is not None:
    return existing

  # Pass 1: validate everything before writing anything, count the splits and the skips.
  t0 = time.perf_counter()
  stats: dict = {}
  split_counts = dict.fromkeys(SPLITS, 0)
  for _, _, text in records_lib.iter_text_records(files, field=field, on_error=on_error, stats=stats):
    split_counts[text_split(text, validation_fraction, seed)] += 1
  skipped = records_lib.skipped(stats)
  log.info("%s: %d good records (%s), skipped %s, checked in %.1f s", name, stats.get("records", 0),
           split_counts, skipped or "none", time.perf_counter() - t0)
  index = {str(f): i for i, f in enumerate(files)}

  def examples(split: str):
    # Pass 2 sees the records pass 1 accepted (skips were logged and counted there).
    for source, line, text in records_lib.iter_text_records(files, field=field, on_error=on_error, log_skipped=False):
      if text_split(text, validation_fraction, seed) == split:
        yield f"{index[source]}:{line}", {"text": text, "source": source, "line": line}

  description = f"Text documents from {len(files)} file(s), field {field!r}."
  return build_dataset(name, out_dir, params, skipped, split_counts, examples, description, text_features())


# ---------------------------------------------------------------------------------------------
# WordNet


def prepare_wordnet(
    out_dir: str | os.PathLike,
    validation_fraction: float = 0.05,
    seed: int = 0,
    name: str = "wordnet",
    limit: int | None = None,
    wordnet_dir: str | os.PathLike | None = None,
) -> Path:
  """WordNet pretraining text (one document per synset) as TFDS dataset ``out_dir/name/1.0.0``.

  ``text`` is :func:`wordnet.pretraining_text`, ``source`` the synset key (``"n:02084071"``), ``line``
  its byte offset. Splits follow ``wordnet.split_of(key, validation_fraction, seed)``: evaluate
  retrieval on the validation synsets of the same fraction and seed. ``limit`` keeps only the first
  synsets (file order), for quick tests.
  """
  check_name(name)
  check_fraction(validation_fraction)
  params = {"kind": "wordnet", "validation_fraction": validation_fraction, "seed": seed, "limit": limit}
  existing = existing_dataset(name, out_dir, params)
  if existing is not None:
    return existing
  records = wordnet_records(validation_fraction, seed, limit, wordnet_dir)
  split_counts, examples = split_records(records)

  return build_dataset(name, out_dir, params, {}, split_counts, examples, WORDNET_DESCRIPTION, text_features())


WORDNET_DESCRIPTION = "WordNet 3.0 synsets as pretraining text: 'lemmas: definition. examples.'"


def wordnet_records(validation_fraction: float, seed: int = 0, limit: int | None = None, wordnet_dir=None
                    ) -> list[tuple[str, str, dict]]:
  """(split, key, example) of every WordNet synset (the first `limit`, file order): what :func:`prepare_wordnet`
  writes, and the Beam path (``stages.beam_prepare``) too."""
  out = []
  for syn in wordnet.read_synsets(wordnet_dir):
    if limit is not None and len(out) >= limit:
      break
    out.append((wordnet.split_of(syn.key, validation_fraction, seed), syn.key,
                {"text": wordnet.pretraining_text(syn), "source": syn.key, "line": syn.offset}))
  return out


# ---------------------------------------------------------------------------------------------
# Local corpora: WordNet, apt's package descriptions, the standard library's docstrings

LOCAL_SOURCES = local.TRAIN_SOURCES
LOCAL_DESCRIPTIONS = {
    "wordnet": WORDNET_DESCRIPTION,
    "apt": "Debian package descriptions (dpkg status, apt lists): 'package: short. long', one per distinct text.",
    "pydoc": "Docstrings of the installed Python standard library (ast, nothing imported): 'qualname: docstring'.",
}


def local_text_records(source: str, validation_fraction: float, seed: int = 0, limit: int | None = None,
                       path=None, on_error: str = "raise", stats: dict | None = None
                       ) -> list[tuple[str, str, dict]]:
  """(split, key, example) of one local corpus's pretraining documents (the first `limit`; `path`: WordNet's
  directory, apt's list of files, pydoc's source root)."""
  if source == "wordnet":
    return wordnet_records(validation_fraction, seed, limit, path)
  if source == "apt":
    from pplx_jax.data.sources import apt
    items = [(p.key, apt.pretraining_text(p), p.line)
             for p in apt.unique_descriptions(apt.read_packages(path, on_error, stats))]
  elif source == "pydoc":
    from pplx_jax.data.sources import pydoc
    seen: set[str] = set()
    items = []
    for d in pydoc.read_docs(path, on_error, stats):
      if d.docstring not in seen:  # inherited copies of one docstring come once
        seen.add(d.docstring)
        items.append((d.key, pydoc.pretraining_text(d), d.line))
  else:
    raise ValueError(f"unknown local text source {source!r}; known: {', '.join(LOCAL_SOURCES)}")
  items = items[:limit] if limit is not None else items
  return [(local.split_of(source, key, validation_fraction, seed), f"{i}",
           {"text": text, "source": f"{source}:{key}", "line": line}) for i, (key, text, line) in enumerate(items)]


def prepare_local_text(
    out_dir: str | os.PathLike,
    sources: Sequence[str] = LOCAL_SOURCES,
    validation_fraction: float = 0.05,
    seed: int = 0,
    limit: int | None = None,
    name: str | None = None,
    on_error: str = "raise",
) -> Path:
  """Pretraining text of one or several local corpora (:data:`LOCAL_SOURCES`) as one TFDS dataset
  ``out_dir/name/1.0.0`` (default name: the sources joined by ``_``). Each record keeps its corpus's split
  (:func:`pplx_jax.data.sources.local.split_of`), so the held-out keys of every corpus stay held out in the later
  stages. ``limit``: the first records of each corpus. Bad apt stanzas / unparsable Python files raise, or with ``on_error="skip"`` are
  skipped and counted in the dataset's metadata."""
  sources = list(sources)
  if not sources or any(s not in LOCAL_SOURCES for s in sources) or len(set(sources)) != len(sources):
    raise ValueError(f"sources must be distinct names from {LOCAL_SOURCES}, got {sources}")
  name = name or "_".join(sources)
  if sources == ["wordnet"] and name == "wordnet":
    return prepare_wordnet(out_dir, validation_fraction, seed, limit=limit)
  check_name(name)
  check_fraction(validation_fraction)
  if on_error not in records_lib.ON_ERROR:
    raise ValueError(f"on_error must be one of {records_lib.ON_ERROR}, got {on_error!r}")
  params = {"kind": "local_text", "sources": sources, "validation_fraction": validation_fraction, "seed": seed,
            "limit": limit, "on_error": on_error}
  existing = existing_dataset(name, out_dir, params)
  if existing is not None:
    return existing
  stats: dict = {}
  records = []
  for source in sources:
    part = local_text_records(source, validation_fraction, seed, limit, on_error=on_error, stats=stats)
    records.extend((s, f"{source}:{k}", ex) for s, k, ex in part)
    log.info("%s: %d %s documents", name, len(part), source)
  split_counts, examples = split_records(records)
  skipped = {r: n for r, n in stats.items() if r not in ("stanzas", "packages", "with_long", "files", "docs")}

  description = " + ".join(LOCAL_DESCRIPTIONS[s] for s in sources)
  return build_dataset(name, out_dir, params, skipped, split_counts, examples, description, text_features())
