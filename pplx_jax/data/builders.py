"""TFDS datasets of raw text (tokenizer-independent), written as ArrayRecord files without TensorFlow.

    pplx-jax prepare --input 'corpus/*.jsonl' --out data/          # -> data/text/1.0.0
    pplx-jax prepare --wordnet --out data/                         # -> data/wordnet/1.0.0

Every record is ``{"text": str, "source": str, "line": int64}`` (TFDS returns the strings as bytes).
``source``/``line`` are the input file and line (parquet: row index) for user text, and the synset key
and byte offset for WordNet. Splits are ``train`` and ``validation`` (omitted when empty):

* user text: by a stable hash of ``seed`` and the document's *text* (not its position), so the split
  does not change when files are renamed, moved or reordered, and exact duplicates always land in the
  same split (no train/validation leakage through duplicates);
* WordNet: by :func:`pplx_jax.data.wordnet.split_of` of the synset key, the same assignment the
  retrieval evaluations use, so validation synsets' glosses are never seen in pretraining.

Inputs are read twice: a first pass validates every record (bad records raise ``DataError`` naming
``file:line`` before anything is written, or are counted with ``on_error="skip"``) and counts the
splits; the second pass feeds TFDS. The parameters (and skip counts) are stored in the dataset's
``metadata.json``: preparing into a directory that already holds the same dataset reuses it, a
different one is an error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import tempfile
import time
import types
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from pplx_jax.data import text as text_lib
from pplx_jax.data import wordnet

log = logging.getLogger(__name__)

VERSION = "1.0.0"
SPLITS = ("train", "validation")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")

__all__ = [
    "VERSION",
    "SPLITS",
    "text_split",
    "prepare_text_dataset",
    "prepare_wordnet",
    "resolve_dataset_dir",
    "load_split",
    "dataset_metadata",
    "add_prepare_args",
    "run_prepare",
]


def text_split(text: str, validation_fraction: float, seed: int = 0) -> str:
  """``"train"`` or ``"validation"`` for a user document (stable hash of seed and text)."""
  return wordnet.split_of(text, validation_fraction, seed)


# ---------------------------------------------------------------------------------------------
# The TFDS builder


def builder_class(name: str, features: dict):
  """A GeneratorBasedBuilder subclass called `name` with these TFDS features (not registered: any number may
  coexist). Every prepared dataset (text, pairs, triplets, contextual documents) is built by one of these."""
  import tensorflow_datasets as tfds

  class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version(VERSION)

    def __init__(self, *, examples: Callable[[str], Iterator[tuple[str, dict]]], splits: Sequence[str],
                 metadata: dict, description: str, **kwargs):
      self._examples = examples
      self._splits = tuple(splits)
      self._metadata = metadata
      self._description = description
      super().__init__(**kwargs)

    def _info(self):
      # Explicit DatasetInfo: dataset_info_from_configs() needs a package-folder layout.
      return tfds.core.DatasetInfo(
          builder=self,
          description=self._description,
          features=tfds.features.FeaturesDict(features),
          metadata=tfds.core.MetadataDict(self._metadata),
      )

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples(split) for split in self._splits}

    def _generate_examples(self, split):
      yield from self._examples(split)

  return types.new_class(name, (_Builder,), {"skip_registration": True}, lambda ns: ns.update(name=name))


def _text_features() -> dict:
  import tensorflow_datasets as tfds
  return {"text": tfds.features.Text(), "source": tfds.features.Text(), "line": np.int64}


def _check_name(name: str) -> None:
  if not _NAME_RE.match(name):
    raise ValueError(f"dataset name {name!r} is not valid: use lowercase letters, digits and '_', "
                     "starting with a letter")


def dataset_metadata(dataset_dir: str | os.PathLike) -> dict:
  """The ``metadata.json`` of a prepared dataset (``params`` and ``skipped``), or {}."""
  path = Path(dataset_dir) / "metadata.json"
  return json.loads(path.read_text()) if path.is_file() else {}


def build_dataset(name: str, out_dir, params: dict, skipped: dict, split_counts: dict,
                  examples: Callable[[str], Iterator[tuple[str, dict]]], description: str, features: dict,
                  kind: str | None = None, unit: str = "records") -> Path:
  """Write ``out_dir/name/1.0.0`` (ArrayRecord) from `examples(split)`; the non-empty splits only, train required.
  metadata.json keeps the params (so a rerun can tell the same dataset from a different one), skip counts, split
  sizes and, when given, the kind."""
  dataset_dir = Path(out_dir) / name / VERSION
  splits = [s for s in SPLITS if split_counts.get(s)]
  if "train" not in splits:
    raise ValueError(f"dataset {name!r}: no {unit} for the train split (split counts {split_counts}, "
                     f"skipped {skipped or 'none'})")
  for s in SPLITS:
    if s not in splits:
      log.warning("%s: the %s split is empty and is omitted", name, s)
  metadata = {"params": params, "skipped": skipped, "split_counts": split_counts}
  if kind is not None:
    metadata["kind"] = kind
  builder = builder_class(name, features)(examples=examples, splits=splits, metadata=metadata,
                                          description=description, data_dir=os.fspath(out_dir),
                                          file_format="array_record")
  assert Path(builder.data_dir) == dataset_dir, (builder.data_dir, dataset_dir)
  with tempfile.TemporaryDirectory() as downloads:  # TFDS creates a downloads/ folder otherwise
    builder.download_and_prepare(download_dir=downloads)
  return dataset_dir


def existing_dataset(name: str, out_dir, params: dict) -> Path | None:
  """The dataset dir if `out_dir` already holds this dataset; raise if it holds a different one."""
  dataset_dir = Path(out_dir) / name / VERSION
  if not (dataset_dir / "dataset_info.json").is_file():
    return None
  old = dataset_metadata(dataset_dir).get("params")
  if old != params:
    raise FileExistsError(
        f"{dataset_dir} already holds a different dataset (prepared with {json.dumps(old)}, now "
        f"{json.dumps(params)}); delete it or choose another out dir (--out) or name")
  log.info("reusing %s (prepared with the same inputs and parameters)", dataset_dir)
  return dataset_dir


def _check_fraction(validation_fraction: float) -> None:
  if not 0.0 <= validation_fraction < 1.0:
    raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")


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
  raise :class:`~pplx_jax.data.text.DataError` (``file:line``) or, with ``on_error="skip"``, are
  skipped and counted (``dataset_metadata(dir)["skipped"]``).
  """
  _check_name(name)
  _check_fraction(validation_fraction)
  if on_error not in text_lib.ON_ERROR:
    raise ValueError(f"on_error must be one of {text_lib.ON_ERROR}, got {on_error!r}")
  files = text_lib.expand_inputs(inputs)
  params = {
      "kind": "text",
      "inputs": [{"path": str(f.resolve()), "bytes": f.stat().st_size} for f in files],
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
  for _, _, text in text_lib.iter_text_records(files, field=field, on_error=on_error, stats=stats):
    split_counts[text_split(text, validation_fraction, seed)] += 1
  skipped = text_lib.skipped(stats)
  log.info("%s: %d good records (%s), skipped %s, checked in %.1f s", name, stats.get("records", 0),
           split_counts, skipped or "none", time.perf_counter() - t0)
  index = {str(f): i for i, f in enumerate(files)}

  def examples(split: str):
    # Pass 2 sees the records pass 1 accepted (skips were logged and counted there).
    for source, line, text in text_lib.iter_text_records(files, field=field, on_error=on_error, log_skipped=False):
      if text_split(text, validation_fraction, seed) == split:
        yield f"{index[source]}:{line}", {"text": text, "source": source, "line": line}

  description = f"Text documents from {len(files)} file(s), field {field!r}."
  return build_dataset(name, out_dir, params, skipped, split_counts, examples, description, _text_features())


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
  _check_name(name)
  _check_fraction(validation_fraction)
  params = {"kind": "wordnet", "validation_fraction": validation_fraction, "seed": seed, "limit": limit}
  existing = existing_dataset(name, out_dir, params)
  if existing is not None:
    return existing
  synsets = []
  for syn in wordnet.read_synsets(wordnet_dir):
    if limit is not None and len(synsets) >= limit:
      break
    synsets.append(syn)
  split_of = {s.key: wordnet.split_of(s.key, validation_fraction, seed) for s in synsets}
  split_counts = dict.fromkeys(SPLITS, 0)
  for split in split_of.values():
    split_counts[split] += 1

  def examples(split: str):
    for syn in synsets:
      if split_of[syn.key] == split:
        yield syn.key, {"text": wordnet.pretraining_text(syn), "source": syn.key, "line": syn.offset}

  description = "WordNet 3.0 synsets as pretraining text: 'lemmas: definition. examples.'"
  return build_dataset(name, out_dir, params, {}, split_counts, examples, description, _text_features())


# ---------------------------------------------------------------------------------------------
# Reading


def resolve_dataset_dir(path: str | os.PathLike) -> Path:
  """Accept ``out/name/1.0.0`` or ``out/name`` (its highest version); raise if neither is a dataset."""
  p = Path(path)
  if (p / "dataset_info.json").is_file():
    return p
  if p.is_dir():
    versions = [d for d in p.iterdir() if (d / "dataset_info.json").is_file() and re.fullmatch(r"\d+\.\d+\.\d+", d.name)]
    if versions:
      return max(versions, key=lambda d: tuple(int(x) for x in d.name.split(".")))
  raise FileNotFoundError(f"{p} is not a prepared dataset (no dataset_info.json); run `pplx-jax prepare` first")


def load_split(dataset_dir: str | os.PathLike, split: str):
  """Random-access data source (``len``, ``ds[i]``, ``ds.__getitems__([i, j])``) of one split.

  Records are dicts ``{"text": bytes, "source": bytes, "line": int}``, in TFDS's (hash-shuffled) order.
  """
  import tensorflow_datasets as tfds

  builder = tfds.builder_from_directory(os.fspath(resolve_dataset_dir(dataset_dir)))
  if split not in builder.info.splits:
    raise ValueError(f"{dataset_dir} has no split {split!r}; it has {sorted(builder.info.splits)}")
  return builder.as_data_source(split=split)


def split_sizes(dataset_dir: str | os.PathLike) -> dict[str, int]:
  """Records per split, from the dataset's ``dataset_info.json``."""
  import tensorflow_datasets as tfds

  builder = tfds.builder_from_directory(os.fspath(resolve_dataset_dir(dataset_dir)))
  return {name: info.num_examples for name, info in builder.info.splits.items()}


# ---------------------------------------------------------------------------------------------
# CLI: `pplx-jax prepare ...`


def add_prepare_args(parser: argparse.ArgumentParser) -> None:
  src = parser.add_mutually_exclusive_group(required=True)
  src.add_argument("--input", nargs="+", action="extend", metavar="FILE_OR_GLOB",
                   help="text files: .txt (a document per line), .jsonl (--field), .parquet (--field column)")
  src.add_argument("--wordnet", action="store_true", help="the English WordNet glosses (apt-get install wordnet-base)")
  parser.add_argument("--out", required=True, help="data directory; the dataset goes to OUT/NAME/1.0.0")
  parser.add_argument("--name", default=None, help="dataset name (default: text, or wordnet)")
  parser.add_argument("--validation-fraction", type=float, default=None,
                      help="fraction of records for the validation split (default 0.01; WordNet 0.05)")
  parser.add_argument("--seed", type=int, default=0, help="seed of the train/validation assignment")
  parser.add_argument("--skip-bad-records", action="store_true",
                      help="skip and count bad records instead of stopping at the first one")
  parser.add_argument("--field", default="text", help="JSON field / parquet column holding the text")
  parser.add_argument("--contextual", action="store_true",
                      help="contextual documents {doc_id, chunks, queries: [{text, chunk}]} from .jsonl/.parquet "
                           "(--input), or the WordNet contextual set (--wordnet); see pplx_jax.data.contextual")
  parser.add_argument("--limit", type=int, default=None, help=argparse.SUPPRESS)  # WordNet subset for tests


def run_prepare(args: argparse.Namespace) -> int:
  import sys

  t0 = time.perf_counter()
  try:
    if getattr(args, "contextual", False):
      from pplx_jax.data import contextual
      if args.wordnet:
        path = contextual.prepare_wordnet_contextual(
            args.out, name=args.name or "wordnet_contextual", seed=args.seed, limit=args.limit,
            validation_fraction=0.05 if args.validation_fraction is None else args.validation_fraction)
      else:
        path = contextual.prepare_contextual(
            args.input, args.out, name=args.name or "contextual", seed=args.seed,
            validation_fraction=0.01 if args.validation_fraction is None else args.validation_fraction,
            on_error="skip" if args.skip_bad_records else "raise")
    elif args.wordnet:
      path = prepare_wordnet(args.out, name=args.name or "wordnet", seed=args.seed, limit=args.limit,
                             validation_fraction=0.05 if args.validation_fraction is None else args.validation_fraction)
    else:
      path = prepare_text_dataset(
          args.input, args.out, name=args.name or "text", seed=args.seed, field=args.field,
          validation_fraction=0.01 if args.validation_fraction is None else args.validation_fraction,
          on_error="skip" if args.skip_bad_records else "raise")
  except (text_lib.DataError, ValueError, FileNotFoundError, FileExistsError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  sizes = split_sizes(path)
  skipped = dataset_metadata(path).get("skipped") or {}
  print(f"dataset {path} ({time.perf_counter() - t0:.1f} s)")
  for split in SPLITS:
    print(f"  {split}: {sizes[split]} records" if split in sizes else f"  {split}: 0 records (split omitted)")
  if skipped:
    print(f"  skipped bad records: {sum(skipped.values())} ("
          + ", ".join(f"{r}: {n}" for r, n in skipped.items()) + ")")
  elif not args.wordnet:
    print("  skipped bad records: 0")
  return 0
