"""TFDS datasets of raw text (tokenizer-independent), written as ArrayRecord files without TensorFlow.

    pplx-jax prepare --input 'corpus/*.jsonl' --out data/          # -> data/text/1.0.0
    pplx-jax prepare --wordnet --out data/                         # -> data/wordnet/1.0.0

Every record is ``{"text": str, "source": str, "line": int64}`` (TFDS returns the strings as bytes).
``source``/``line`` are the input file and line (parquet: row index) for user text, and the synset key
and byte offset for WordNet. Splits are ``train`` and ``validation`` (omitted when empty):

* user text: by a stable hash of ``seed`` and the document's *text* (not its position), so the split
  does not change when files are renamed, moved or reordered, and exact duplicates always land in the
  same split (no train/validation leakage through duplicates);
* WordNet: by :func:`pplx_jax.data.sources.wordnet.split_of` of the synset key, the same assignment the
  retrieval evaluations use, so validation synsets' glosses are never seen in pretraining.

Inputs are read twice: a first pass validates every record (bad records raise ``DataError`` naming
``file:line`` before anything is written, or are counted with ``on_error="skip"``) and counts the
splits; the second pass feeds TFDS. The parameters (and skip counts) are stored in the dataset's
``metadata.json``: preparing into a directory that already holds the same dataset reuses it, a
different one is an error.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import types
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from pplx_jax.core import paths

log = logging.getLogger(__name__)

VERSION = "1.0.0"
SPLITS = ("train", "validation")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


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


def check_name(name: str) -> None:
  """A dataset name is its folder name and TFDS builder name: lowercase letters, digits and '_'."""
  if not _NAME_RE.match(name):
    raise ValueError(f"dataset name {name!r} is not valid: use lowercase letters, digits and '_', "
                     "starting with a letter")


def dataset_metadata(dataset_dir: str | os.PathLike) -> dict:
  """The ``metadata.json`` of a prepared dataset (``params`` and ``skipped``), or {}."""
  path = paths.as_path(dataset_dir) / "metadata.json"
  return json.loads(path.read_text()) if path.is_file() else {}


def split_records(records: Sequence[tuple[str, str, dict]]) -> tuple[dict, Callable[[str], Iterator[tuple[str, dict]]]]:
  """In-memory ``(split, key, example)`` records -> their split counts and the ``examples(split)`` generator that
  :func:`build_dataset` takes."""
  split_counts = dict.fromkeys(SPLITS, 0)
  for split, _, _ in records:
    split_counts[split] += 1

  def examples(split: str):
    for s, key, example in records:
      if s == split:
        yield key, example

  return split_counts, examples


def splits_and_metadata(name: str, params: dict, skipped: dict, split_counts: dict, kind: str | None,
                        unit: str) -> tuple[list[str], dict]:
  """The splits to write (the non-empty ones; train is required) and metadata.json's content, the same for the
  single-process writer and the Beam one."""
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
  return splits, metadata


def build_dataset(name: str, out_dir, params: dict, skipped: dict, split_counts: dict,
                  examples: Callable[[str], Iterator[tuple[str, dict]]], description: str, features: dict,
                  kind: str | None = None, unit: str = "records") -> Path:
  """Write ``out_dir/name/1.0.0`` (ArrayRecord) from `examples(split)`; the non-empty splits only, train required.
  metadata.json keeps the params (so a rerun can tell the same dataset from a different one), skip counts, split
  sizes and, when given, the kind. A bucket `out_dir` (gs://) is written locally and uploaded when complete: the
  ArrayRecord writer TFDS uses opens local files only."""
  if paths.is_url(out_dir):
    dataset_dir = paths.as_path(out_dir) / name / VERSION
    with tempfile.TemporaryDirectory(prefix="pplx-prepare-") as local:
      built = build_dataset(name, local, params, skipped, split_counts, examples, description, features, kind, unit)
      for f in sorted(built.iterdir(), key=lambda f: f.name == "dataset_info.json"):
        paths.copy_tree(f, dataset_dir / f.name)  # dataset_info.json last: it marks the dataset complete
    return dataset_dir
  dataset_dir = Path(out_dir) / name / VERSION
  splits, metadata = splits_and_metadata(name, params, skipped, split_counts, kind, unit)
  builder = builder_class(name, features)(examples=examples, splits=splits, metadata=metadata,
                                          description=description, data_dir=os.fspath(out_dir),
                                          file_format="array_record")
  assert Path(builder.data_dir) == dataset_dir, (builder.data_dir, dataset_dir)
  with tempfile.TemporaryDirectory() as downloads:  # TFDS creates a downloads/ folder otherwise
    builder.download_and_prepare(download_dir=downloads)
  return dataset_dir


def existing_dataset(name: str, out_dir, params: dict) -> Path | None:
  """The dataset dir if `out_dir` (local or gs://) already holds this dataset; raise if it holds a different one."""
  dataset_dir = paths.as_path(out_dir) / name / VERSION
  if not (dataset_dir / "dataset_info.json").is_file():
    return None
  old = dataset_metadata(dataset_dir).get("params")
  if old != params:
    raise FileExistsError(
        f"{dataset_dir} already holds a different dataset (prepared with {json.dumps(old)}, now "
        f"{json.dumps(params)}); delete it or choose another out dir (--out) or name")
  log.info("reusing %s (prepared with the same inputs and parameters)", dataset_dir)
  return dataset_dir


def check_fraction(validation_fraction: float) -> None:
  if not 0.0 <= validation_fraction < 1.0:
    raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")


# ---------------------------------------------------------------------------------------------
# Reading


def resolve_dataset_dir(path: str | os.PathLike) -> Path:
  """Accept ``out/name/1.0.0`` or ``out/name`` (its highest version), local or gs://; raise if neither is a
  dataset."""
  p = paths.as_path(path)
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

  builder = tfds.builder_from_directory(str(resolve_dataset_dir(dataset_dir)))
  if split not in builder.info.splits:
    raise ValueError(f"{dataset_dir} has no split {split!r}; it has {sorted(builder.info.splits)}")
  return builder.as_data_source(split=split)


def split_sizes(dataset_dir: str | os.PathLike) -> dict[str, int]:
  """Records per split, from the dataset's ``dataset_info.json``."""
  import tensorflow_datasets as tfds

  builder = tfds.builder_from_directory(str(resolve_dataset_dir(dataset_dir)))
  return {name: info.num_examples for name, info in builder.info.splits.items()}


def read_records(source, indices: Sequence[int]) -> list:
  """Records `indices` of a data source in one batched read where the source has one (a TFDS ArrayRecord source
  serves a batch far faster than single records: ~40 us vs ~1 ms each)."""
  getitems = getattr(source, "__getitems__", None)
  return list(getitems(list(indices))) if getitems is not None else [source[i] for i in indices]


def as_text(value) -> str:
  """A text feature as TFDS returns it (bytes, or a 0-d array of bytes), or an in-memory str, as str."""
  if isinstance(value, np.ndarray) and value.ndim == 0:
    value = value.item()
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)
