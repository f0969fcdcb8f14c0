"""Every dataset kind on Apache Beam: the stages' record validators, splits and examples plugged into
:mod:`pplx_jax.data.beam`, so a dataset prepared here equals the single-process ``prepare_*`` one record for record.

    prepare_on_beam("text", "corpus/*.jsonl", "data/",
                    settings=BeamSettings("DirectRunner", "--direct_num_workers=4 --direct_running_mode=multi_processing"))
    pplx-jax prepare --input 'gs://B/corpus/*.jsonl.gz' --out gs://B/data --beam-runner DataflowRunner --beam-options=...

Kinds read from files (``inputs``: paths, globs or gs:// URLs): ``text`` (:mod:`.pretrain.prepare`), ``pair`` and
``triplet`` (:mod:`.contrastive.prepare`), ``contextual`` (:mod:`.contextual.prepare`); each is a
:class:`~pplx_jax.data.beam.RecordKind` whose methods are that module's own functions. The WordNet kinds
(``wordnet``, ``wordnet_pairs``, ``wordnet_contextual``) are small: their records are built in the launcher by the
same ``wordnet_*_records`` functions as the single-process path and written on Beam; ``wordnet_triplets`` writes
its triplets as JSONL next to the output and prepares them as kind ``triplet``, as the single-process path does.

The params written to metadata.json are the single-process path's, so a dataset prepared one way is reused (or
refused as different) by the other. Nothing here imports jax or grain: Beam workers import this module.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any, ClassVar

from pplx_jax.data import beam as beam_lib
from pplx_jax.data import prepared
from pplx_jax.data import records as records_lib
from pplx_jax.data.beam import BeamSettings
from pplx_jax.data.records import DataError
from pplx_jax.stages.contextual import prepare as contextual_prepare
from pplx_jax.stages.contrastive import prepare as contrastive_prepare
from pplx_jax.stages.pretrain import prepare as pretrain_prepare

__all__ = ["FILE_KINDS", "KINDS", "WORDNET_KINDS", "BeamSettings", "ContextualKind", "PairKind", "TextKind",
           "prepare_on_beam"]

FILE_KINDS = ("text", "pair", "triplet", "contextual")
WORDNET_KINDS = ("wordnet", "wordnet_pairs", "wordnet_triplets", "wordnet_contextual")
KINDS = FILE_KINDS + WORDNET_KINDS
DEFAULT_NAMES = {"text": "text", "pair": "pairs", "triplet": "triplets", "contextual": "contextual"}


# ---------------------------------------------------------------------------------------------
# The file kinds (pickled to the workers: plain frozen dataclasses of module-level classes)


@dataclasses.dataclass(frozen=True)
class TextKind:
  """Documents of ``.txt`` lines, a JSONL field or a parquet column (:func:`records.iter_text_records`)."""
  field: str = "text"
  validation_fraction: float = 0.01
  seed: int = 0
  reasons: ClassVar[tuple[str, ...]] = records_lib.REASONS

  def check_file(self, path: str, fmt: str) -> DataError | None:
    return None

  def columns(self) -> tuple[str, ...]:
    return (self.field,)

  def required_columns(self) -> tuple[str, ...]:
    return (self.field,)

  def validate(self, obj: Any, fmt: str, path: str, line: int) -> str | DataError:
    if fmt == "text":
      value = obj
    elif fmt == "jsonl":
      value = records_lib.jsonl_text(obj, self.field, path, line)
    else:
      value = records_lib.field_value(obj.get(self.field), self.field, path, line)
    if not isinstance(value, DataError) and not value.strip():  # as iter_text_records
      return DataError(path, line, "empty_text", "empty text")
    return value

  def split(self, record: str) -> str:
    return pretrain_prepare.text_split(record, self.validation_fraction, self.seed)

  def example(self, record: str, source: str, line: int) -> dict:
    return {"text": record, "source": source, "line": line}


@dataclasses.dataclass(frozen=True)
class PairKind:
  """Query/positive pairs or triplets with negatives (:func:`contrastive.prepare.iter_pair_records`)."""
  kind: str = "pair"
  fields: tuple[str, str, str] = ("query", "positive", "negatives")
  validation_fraction: float = 0.01
  seed: int = 0
  reasons: ClassVar[tuple[str, ...]] = contrastive_prepare.REASONS

  def check_file(self, path: str, fmt: str) -> DataError | None:
    if fmt not in ("jsonl", "parquet"):
      return DataError(path, None, "unsupported_format",
                       "pairs and triplets are read from .jsonl or .parquet files (optionally .gz)")
    return None

  def columns(self) -> tuple[str, ...]:
    return self.fields if self.kind == "triplet" else self.fields[:2]

  def required_columns(self) -> tuple[str, ...]:
    return self.columns()

  def validate(self, obj: Any, fmt: str, path: str, line: int) -> dict | DataError:
    return contrastive_prepare.validate(obj, self.kind, self.fields, path, line)

  def split(self, record: dict) -> str:
    return contrastive_prepare.query_split(record["query"], self.validation_fraction, self.seed)

  def example(self, record: dict, source: str, line: int) -> dict:
    return {**record, "source": source, "line": line}


@dataclasses.dataclass(frozen=True)
class ContextualKind:
  """Contextual documents (:func:`contextual.prepare.iter_contextual_records`, training: queries required)."""
  validation_fraction: float = 0.01
  seed: int = 0
  reasons: ClassVar[tuple[str, ...]] = contextual_prepare.REASONS

  def check_file(self, path: str, fmt: str) -> DataError | None:
    if fmt not in ("jsonl", "parquet"):
      return DataError(path, None, "unsupported_format", "contextual documents are read from .jsonl or .parquet files")
    return None

  def columns(self) -> tuple[str, ...]:
    return ("doc_id", "chunks", "queries")

  def required_columns(self) -> tuple[str, ...]:
    return ("doc_id", "chunks")

  def validate(self, obj: Any, fmt: str, path: str, line: int) -> dict | DataError:
    return contextual_prepare.validate(obj, path, line, True)

  def split(self, record: dict) -> str:
    return contextual_prepare.document_split(record, self.validation_fraction, self.seed)

  def example(self, record: dict, source: str, line: int) -> dict:
    return contextual_prepare.example(record, source, line)


# ---------------------------------------------------------------------------------------------
# Entry point


def prepare_on_beam(kind: str, inputs=None, out_dir: str | os.PathLike = "data", name: str | None = None, *,
                    validation_fraction: float | None = None, seed: int = 0, on_error: str = "raise",
                    field: str = "text", query_field: str = "query", positive_field: str = "positive",
                    negatives_field: str = "negatives", limit: int | None = None, wordnet_dir=None,
                    wordnet_pair_kinds: Sequence[str] = ("lemma", "example"), num_negatives: int = 3,
                    settings: BeamSettings | None = None) -> str:
  """Prepare ``out_dir/name/1.0.0`` on Beam: the dataset the single-process function of `kind` writes
  (``prepare_text_dataset``, ``prepare_pairs``, ``prepare_contextual``, ``prepare_wordnet``,
  ``prepare_wordnet_pairs``, ``prepare_wordnet_triplets``, ``prepare_wordnet_contextual``), with its defaults
  (`name`: the kind's; `validation_fraction`: 0.01 for files, 0.05 for WordNet). Returns the dataset directory (a
  str: it may be a gs:// URL). `settings`: the runner and its flags (default: the DirectRunner in this process)."""
  settings = settings or BeamSettings()
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  out_dir = os.fspath(out_dir)
  if validation_fraction is None:
    validation_fraction = 0.05 if kind in WORDNET_KINDS else 0.01
  name = name or DEFAULT_NAMES.get(kind, kind)
  prepared.check_name(name)
  prepared.check_fraction(validation_fraction)
  if on_error not in records_lib.ON_ERROR:
    raise ValueError(f"on_error must be one of {records_lib.ON_ERROR}, got {on_error!r}")
  beam_lib.pipeline_options(settings.options)  # a bad flag (or multi_threading) fails before any reading
  if kind == "wordnet_triplets":
    return _wordnet_triplets(out_dir, validation_fraction, seed, num_negatives, limit, settings)
  if kind in WORDNET_KINDS:
    return _wordnet(kind, out_dir, name, validation_fraction, seed, limit, wordnet_dir, list(wordnet_pair_kinds),
                    settings)
  if inputs is None:
    raise ValueError(f"kind {kind!r} reads files: give inputs")

  files = beam_lib.expand_inputs(inputs)
  inputs_param = beam_lib.input_params(files)
  if kind == "text":
    record_kind = TextKind(field, validation_fraction, seed)
    params = {"kind": "text", "inputs": inputs_param, "field": field, "validation_fraction": validation_fraction,
              "seed": seed, "on_error": on_error}
    features, meta_kind, unit = pretrain_prepare.text_features(), None, "records"
    description = f"Text documents from {len(files)} file(s), field {field!r}."
  elif kind in ("pair", "triplet"):
    contrastive_prepare.check_args(name, validation_fraction, kind)
    record_kind = PairKind(kind, (query_field, positive_field, negatives_field), validation_fraction, seed)
    fields = {"query_field": query_field, "positive_field": positive_field, "negatives_field": negatives_field}
    params = {"kind": kind, "inputs": inputs_param,
              "fields": fields if kind == "triplet" else {k: fields[k] for k in ("query_field", "positive_field")},
              "validation_fraction": validation_fraction, "seed": seed, "on_error": on_error}
    features, meta_kind, unit = contrastive_prepare.features(kind), kind, "records"
    description = (f"{kind.capitalize()}s (query, positive{', negatives' if kind == 'triplet' else ''}) from "
                   f"{len(files)} file(s).")
  else:
    record_kind = ContextualKind(validation_fraction, seed)
    params = {"kind": "contextual", "inputs": inputs_param, "validation_fraction": validation_fraction, "seed": seed,
              "on_error": on_error}
    features, meta_kind, unit = contextual_prepare.features(), "contextual", "documents"
    description = f"Contextual documents (chunks + queries with gold chunks) from {len(files)} file(s)."
  return beam_lib.prepare_files(record_kind, files, out_dir, name, params=params, features=features,
                                description=description, meta_kind=meta_kind, unit=unit, on_error=on_error,
                                settings=settings)


def _wordnet(kind: str, out_dir: str, name: str, validation_fraction: float, seed: int, limit, wordnet_dir,
             pair_kinds: list[str], settings: BeamSettings) -> str:
  if kind == "wordnet":
    params = {"kind": "wordnet", "validation_fraction": validation_fraction, "seed": seed, "limit": limit}
    def make():
      return pretrain_prepare.wordnet_records(validation_fraction, seed, limit, wordnet_dir)
    features, description, meta_kind, unit = (pretrain_prepare.text_features(), pretrain_prepare.WORDNET_DESCRIPTION,
                                              None, "records")
  elif kind == "wordnet_pairs":
    contrastive_prepare.check_args(name, validation_fraction, "pair")
    params = {"kind": "wordnet_pairs", "validation_fraction": validation_fraction, "seed": seed, "kinds": pair_kinds,
              "limit": limit}
    def make():
      return contrastive_prepare.wordnet_pair_records(pair_kinds, validation_fraction, seed, limit, wordnet_dir)
    features, description, meta_kind, unit = (contrastive_prepare.features("pair"),
                                              contrastive_prepare.wordnet_pairs_description(pair_kinds), "pair",
                                              "records")
  else:
    params = {"kind": "wordnet_contextual", "validation_fraction": validation_fraction, "seed": seed, "limit": limit}
    def make():
      return contextual_prepare.wordnet_contextual_records(validation_fraction, seed, limit, wordnet_dir)
    features, description, meta_kind, unit = (contextual_prepare.features(), contextual_prepare.WORDNET_DESCRIPTION,
                                              "contextual", "documents")
  existing = beam_lib.existing_dataset(name, out_dir, params)  # before building the records
  if existing is not None:
    return existing
  return beam_lib.prepare_records(make(), out_dir, name, params=params, features=features, description=description,
                                  meta_kind=meta_kind, unit=unit, settings=settings)


def _wordnet_triplets(out_dir: str, validation_fraction: float, seed: int, num_negatives: int, limit,
                      settings: BeamSettings) -> str:
  """:func:`contrastive.prepare.prepare_wordnet_triplets` on Beam: its triplets as a JSONL file in a temp folder
  every worker sees, prepared as kind "triplet" with its 1% in-domain validation split."""
  from apache_beam.io.filesystems import FileSystems

  existing = FileSystems.join(out_dir, "wordnet_triplets", prepared.VERSION)
  if FileSystems.exists(FileSystems.join(existing, "dataset_info.json")):
    return existing
  tmp_dir = beam_lib.temp_dir(out_dir, "wordnet_triplets_records")
  try:
    path = FileSystems.join(tmp_dir, "wordnet_triplets.jsonl")
    beam_lib.write_jsonl(path, contrastive_prepare.triplet_records(validation_fraction, seed, num_negatives, limit))
    return prepare_on_beam("triplet", [path], out_dir, "wordnet_triplets", validation_fraction=0.01, seed=seed,
                           settings=settings)
  finally:
    beam_lib.cleanup(tmp_dir)
