"""Preparing datasets on Apache Beam: the ArrayRecord datasets of :mod:`pplx_jax.data.prepared`, at scale.

This module is the Beam plumbing and knows no record kind: a kind (text, pairs, contextual documents; defined with
the stage that trains on it, ``stages/beam_prepare.py``) is a :class:`RecordKind`, the stage's own validator,
split and example functions behind one small interface. Two pipelines, as the single-process path reads twice:

1. *validate* (:func:`validate_inputs`): the inputs are cut into :class:`WorkItem` s (a file; an uncompressed
   ``.txt``/``.jsonl`` file above ``split_bytes`` into byte ranges that own the lines starting in them; a parquet
   file into runs of row groups; a ``.gz`` file whole) spread over the workers. Each item is decoded with
   :mod:`pplx_jax.data.records`' line decoders, validated by the kind and reduced to a small summary (good records
   per split, skips per reason, its line count, its first bad records); a ``CombineGlobally`` sums the summaries
   over workers into one JSON file the launcher reads. The line counts of the byte ranges turn range-local line
   numbers into file lines (prefix sums), so every error still names ``file:line``. With ``on_error="raise"`` the
   launcher raises the *first* bad record in file order (the one the single-process path raises) before anything
   is written; with ``"skip"`` the summed counts go to metadata.json and the first 10 bad records per reason are
   logged, as the single-process path logs them. Beam counters (namespace ``pplx_jax.prepare``) count the same
   things per worker for the runner's UI.
2. *write* (:func:`write_dataset`): the builder of :func:`pplx_jax.data.prepared.builder_class` with
   ``_split_generators(dl_manager, pipeline)`` returning one PCollection of ``(key, example)`` per non-empty split.
   TFDS's Beam writer serialises, orders by the hash of the key (salted with the split, as the single-process
   writer does: ``as_data_source(split)[i]`` is the same record for every ``i`` whatever the shard count), writes
   ArrayRecord shards into ``NAME/incomplete.*`` and renames it only when the pipeline succeeded and the written
   split sizes equal the validated counts, so a failed run leaves no dataset.

Storage: inputs and the output may be local paths or URLs (gs://): Beam's FileSystems read the inputs, TFDS writes
through etils.epath (gcsfs; `core.paths` points it at the emulator). array_record *reads* gs:// but its writer opens local files only, so
:class:`ShardWriter` writes a remote shard to the worker's disk and uploads it.

Runners (``--beam-runner``; flags in ``--beam-options``, never from ``sys.argv``): the DirectRunner (in_memory: one
process; ``--direct_num_workers=N --direct_running_mode=multi_processing``: N worker processes; multi_threading is
refused, it loses records: :func:`pipeline_options`), DataflowRunner, FlinkRunner, SparkRunner, PortableRunner.
Workers import this module and the kind's module by name (pickled DoFns), so they need pplx-jax installed (or on
PYTHONPATH, which the DirectRunner's worker processes inherit) and nothing of it defined in ``__main__``. Neither
imports jax or grain.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import shutil
import tempfile
import time
import types
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

from pplx_jax.core import paths
from pplx_jax.core.errors import UserError
from pplx_jax.data import prepared
from pplx_jax.data import records as records_lib
from pplx_jax.data.records import DataError

log = logging.getLogger(__name__)

SPLITS = prepared.SPLITS
METRICS_NAMESPACE = "pplx_jax.prepare"
SPLIT_BYTES = 64 << 20  # work item size: big enough that opening a file is noise, small enough to spread a file
RUNNERS = ("DirectRunner", "DataflowRunner", "FlinkRunner", "SparkRunner", "PortableRunner")
_LOCAL_RUNNERS = ("DirectRunner", "direct", "BundleBasedDirectRunner")


class RecordKind(Protocol):
  """What the Beam path needs of a record kind; each method is the single-process path's own function."""

  reasons: tuple[str, ...]  # skip reasons, in metadata.json's order

  def check_file(self, path: str, fmt: str) -> DataError | None:
    """The file-level error of a file this kind cannot read (unsupported format), or None."""

  def columns(self) -> tuple[str, ...]:
    """The parquet columns read (those present)."""

  def required_columns(self) -> tuple[str, ...]:
    """The parquet columns a file must have."""

  def validate(self, obj: Any, fmt: str, path: str, line: int) -> Any:
    """A decoded line (text: the string; JSONL: the JSON value) or parquet row -> the record, or its DataError."""

  def split(self, record: Any) -> str:
    """The record's split, as the single-process path assigns it."""

  def example(self, record: Any, source: str, line: int) -> dict:
    """The dataset example of the record."""


# ---------------------------------------------------------------------------------------------
# Options


def pipeline_options(beam_options: PipelineOptions | str | Sequence[str] | None = None,
                     job_suffix: str | None = None) -> PipelineOptions:
  """PipelineOptions from a flag string or list (``--beam-options``). Never from sys.argv: ``PipelineOptions()``
  without ``flags`` parses the process's own command line (pytest's or pplx-jax's arguments). `job_suffix` is
  appended to a ``--job_name`` (one Beam job per pass; Dataflow refuses a second job of the same name)."""
  if isinstance(beam_options, PipelineOptions):
    flags = beam_options.get_all_options(drop_default=True, retain_unknown_options=True)
    opts = PipelineOptions(flags=[], **flags)
  else:
    flags = shlex.split(beam_options) if isinstance(beam_options, str) else list(beam_options or [])
    opts = PipelineOptions(flags=flags)
  if opts.get_all_options().get("direct_running_mode") == "multi_threading":
    # Beam 2.77's FnApiRunner in multi_threading mode lost part of a GroupByKey value (TFDS groups a whole shard
    # under one key: 461 and 552 of 49,527 records gone in 2 of ~20 runs) and twice grew past 4 GiB (once OOM-killed
    # at 22 GiB) on 17 MB of input; in_memory and multi_processing never did.
    raise UserError("--direct_running_mode=multi_threading loses records in Beam's DirectRunner (Beam 2.77); use "
                    "--direct_running_mode=multi_processing (parallel) or in_memory")
  gcp = opts.view_as(GoogleCloudOptions)
  if job_suffix and gcp.job_name:
    gcp.job_name = f"{gcp.job_name}-{job_suffix}"
  return opts


def is_local_runner(runner: str) -> bool:
  return runner in _LOCAL_RUNNERS


# ---------------------------------------------------------------------------------------------
# Files and work items


def is_remote(path: str | os.PathLike) -> bool:
  return "://" in os.fspath(path)


def expand_inputs(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
  """Input files as the single-process path names them (local: :func:`records.expand_inputs`, the same order and
  errors); URLs (gs://...) through Beam's filesystems, each pattern sorted."""
  if isinstance(inputs, (str, os.PathLike)):
    inputs = [inputs]
  out: list[str] = []
  for p in map(os.fspath, inputs):
    if not is_remote(p):
      out.extend(str(f) for f in records_lib.expand_inputs([p]))
      continue
    matches = sorted(m.path for m in FileSystems.match([p])[0].metadata_list)
    if not matches:
      raise FileNotFoundError(f"input pattern {p!r} matched no file")
    out.extend(matches)
  if not out:
    raise FileNotFoundError("no input files given")
  return out


def file_size(path: str) -> int:
  if is_remote(path):
    return FileSystems.match([path])[0].metadata_list[0].size_in_bytes
  return os.stat(path).st_size


def input_params(files: Sequence[str]) -> list[dict]:
  """The ``inputs`` of a dataset's params, as the single-process path writes them (local paths resolved)."""
  return [{"path": f if is_remote(f) else os.path.realpath(f), "bytes": file_size(f)} for f in files]


@dataclasses.dataclass(frozen=True)
class WorkItem:
  """One unit of reading: lines starting in bytes [start, end) of a text/JSONL file (end None: to the end), or row
  groups [start, end) of a parquet file. ``first_line``: the file line (parquet: row) of its first record; None for
  a byte range past the first until the validate pass has counted the lines before it."""
  file_index: int
  range_index: int
  path: str  # as the single-process path names it (records' "source", errors' file)
  url: str  # what the workers open
  fmt: str  # "text" | "jsonl" | "parquet"
  gz: bool
  start: int
  end: int | None
  first_line: int | None


def _parquet_meta(url: str):
  import pyarrow.parquet as pq

  with FileSystems.open(url, compression_type=CompressionTypes.UNCOMPRESSED) as f:
    pf = pq.ParquetFile(f)
    return pf.schema_arrow.names, [pf.metadata.row_group(i) for i in range(pf.metadata.num_row_groups)]


def plan(files: Sequence[str], kind: RecordKind, split_bytes: int = SPLIT_BYTES
         ) -> tuple[list[WorkItem], DataError | None]:
  """Work items of `files`, and the file-level error (unsupported format, parquet without a required column) of the
  first file that has one: the items stop before that file, as the single-process path stops there."""
  items: list[WorkItem] = []
  for i, path in enumerate(files):
    fmt = records_lib.file_format(path)
    url = path if is_remote(path) else os.path.abspath(path)
    gz = path.lower().endswith(".gz")
    err = kind.check_file(path, fmt)
    if err is not None:
      return items, err
    if fmt == "parquet":
      names, groups = _parquet_meta(url)
      missing = [c for c in kind.required_columns() if c not in names]
      if missing:
        return items, DataError(path, None, "missing_field",
                                f"parquet file has no column {missing[0]!r} (columns: {names})")
      row, g, r = 0, 0, 0
      while g < len(groups):
        start, first, nbytes = g, row, 0
        while g < len(groups) and (g == start or nbytes + groups[g].total_byte_size <= split_bytes):
          nbytes += groups[g].total_byte_size
          row += groups[g].num_rows
          g += 1
        items.append(WorkItem(i, r, path, url, fmt, gz, start, g, first))
        r += 1
      continue
    size = file_size(path)
    if gz or size <= split_bytes:
      items.append(WorkItem(i, 0, path, url, fmt, gz, 0, None, 1))
      continue
    for r, start in enumerate(range(0, size, split_bytes)):
      end = start + split_bytes
      items.append(WorkItem(i, r, path, url, fmt, gz, start, None if end >= size else end, 1 if r == 0 else None))
  return items, None


def raw_lines(item: WorkItem) -> Iterator[bytes]:
  """The lines (with their newline) that start in the item's byte range: a range whose start is inside a line
  leaves that line to the range before it."""
  compression = CompressionTypes.GZIP if item.gz else CompressionTypes.UNCOMPRESSED
  with FileSystems.open(item.url, compression_type=compression) as f:
    pos = item.start
    if item.start > 0:
      f.seek(item.start - 1)
      if f.read(1) != b"\n":
        pos += len(f.readline())
    while item.end is None or pos < item.end:
      raw = f.readline()
      if not raw:
        return
      pos += len(raw)
      yield raw


def _parquet_objects(item: WorkItem, columns: Sequence[str]) -> Iterator[dict]:
  import pyarrow.parquet as pq

  with FileSystems.open(item.url, compression_type=CompressionTypes.UNCOMPRESSED) as f:
    pf = pq.ParquetFile(f)
    cols = [c for c in columns if c in pf.schema_arrow.names]
    for batch in pf.iter_batches(batch_size=4096, row_groups=list(range(item.start, item.end)), columns=cols):
      yield from batch.to_pylist()


def item_records(item: WorkItem, kind: RecordKind) -> Iterator[tuple[int, Any]]:
  """(offset within the item, record or DataError) for every record of the item, and one (offset, None) per blank
  JSONL line (a line without a record). The file line is ``first_line + offset``; while ``first_line`` is unknown
  the errors carry a placeholder line that :func:`fix_lines` replaces."""
  base = item.first_line
  line = (lambda off: base + off) if base is not None else (lambda off: -1 - off)
  if item.fmt == "parquet":
    for off, obj in enumerate(_parquet_objects(item, kind.columns())):
      yield off, kind.validate(obj, "parquet", item.path, line(off))
    return
  decode = records_lib.decode_text_line if item.fmt == "text" else records_lib.decode_jsonl_line
  for off, raw in enumerate(raw_lines(item)):
    obj = decode(raw, item.path, line(off))
    if obj is records_lib.BLANK:
      yield off, None
    elif isinstance(obj, DataError):
      yield off, obj
    else:
      yield off, kind.validate(obj, item.fmt, item.path, line(off))


def _detail(err: DataError) -> str:
  where = err.path if err.line is None else f"{err.path}:{err.line}"
  return str(err)[len(where) + 2:]


# ---------------------------------------------------------------------------------------------
# Pass 1: validate and count


def _empty_summary() -> dict:
  return {"records": 0, "split_counts": dict.fromkeys(SPLITS, 0), "skipped": {}, "lines": [], "bad": [],
          "bad_total": 0}


def _keep_bad(bad: list) -> list:
  """The first few bad records of each reason (as many as the single-process path logs), in file order; the first
  one overall is among them."""
  kept, per = [], {}
  for b in sorted(bad, key=lambda b: (b[0], b[1], b[2])):
    n = per.get(b[4], 0)
    if n < records_lib._LOGGED_PER_REASON:
      kept.append(b)
      per[b[4]] = n + 1
  return kept


class _Validate(beam.DoFn):
  """Work item -> its summary (counts by split and reason, line count, first bad records); Beam counters too."""

  def __init__(self, kind: RecordKind):
    self._kind = kind

  def process(self, item: WorkItem):
    s = _empty_summary()
    n_lines = 0
    for off, rec in item_records(item, self._kind):
      n_lines = off + 1
      if rec is None:
        continue
      if isinstance(rec, DataError):
        s["skipped"][rec.reason] = s["skipped"].get(rec.reason, 0) + 1
        s["bad_total"] += 1
        s["bad"].append((item.file_index, item.range_index, off, rec.path, rec.reason, _detail(rec)))
        beam.metrics.Metrics.counter(METRICS_NAMESPACE, f"skipped_{rec.reason}").inc()
        continue
      s["records"] += 1
      split = self._kind.split(rec)
      s["split_counts"][split] += 1
      beam.metrics.Metrics.counter(METRICS_NAMESPACE, f"records_{split}").inc()
    s["lines"] = [(item.file_index, item.range_index, n_lines)]
    s["bad"] = _keep_bad(s["bad"])
    yield s


class _MergeSummaries(beam.CombineFn):
  """Sums the per-item summaries over workers (associative, commutative: any bundle order gives one result)."""

  def create_accumulator(self):
    return _empty_summary()

  def add_input(self, acc, s):
    return self.merge_accumulators([acc, s])

  def merge_accumulators(self, accs):
    out = _empty_summary()
    for a in accs:
      out["records"] += a["records"]
      out["bad_total"] += a["bad_total"]
      for k, v in a["split_counts"].items():
        out["split_counts"][k] += v
      for k, v in a["skipped"].items():
        out["skipped"][k] = out["skipped"].get(k, 0) + v
      out["lines"].extend(a["lines"])
      out["bad"].extend(a["bad"])
    out["lines"].sort()
    out["bad"] = _keep_bad(out["bad"])
    return out

  def extract_output(self, acc):
    return acc


def fix_lines(items: Sequence[WorkItem], summary: dict) -> tuple[list[WorkItem], list[DataError]]:
  """Items with every first_line known (prefix sums of the ranges' line counts) and the kept bad records as
  DataErrors naming their file line, in file order."""
  counts = {(fi, ri): n for fi, ri, n in summary["lines"]}
  fixed, first = [], {}
  next_line: dict[int, int] = {}
  for it in items:
    fl = it.first_line if it.first_line is not None else next_line[it.file_index]
    next_line[it.file_index] = fl + counts.get((it.file_index, it.range_index), 0)
    fixed.append(dataclasses.replace(it, first_line=fl))
    first[(it.file_index, it.range_index)] = fl
  errors = [DataError(path, first[(fi, ri)] + off, reason, detail)
            for fi, ri, off, path, reason, detail in sorted(summary["bad"], key=lambda b: b[:3])]
  return fixed, errors


def _write_summary(summary: dict, path: str) -> None:
  # One element, one object, written whole (a retry rewrites the same bytes). Not WriteToText: its finalize renames
  # through GCS's batch API, which fake-gcs-server (the tests' bucket) does not implement.
  with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
    f.write(json.dumps(summary).encode("utf-8"))


def validate_inputs(items: Sequence[WorkItem], kind: RecordKind, runner: str, options: PipelineOptions, tmp_dir: str
                    ) -> tuple[dict, list[WorkItem], list[DataError], dict]:
  """Pass 1 on `runner`: (summed summary, items with their first lines, first bad records in file order, Beam
  counters as the runner reports them)."""
  summary_path = FileSystems.join(tmp_dir, "summary.json")
  p = beam.Pipeline(runner=runner, options=options)
  _ = (p
       | "WorkItems" >> beam.Create(list(items))
       | "Spread" >> beam.Reshuffle()
       | "Validate" >> beam.ParDo(_Validate(kind))
       | "Sum" >> beam.CombineGlobally(_MergeSummaries())
       | "WriteSummary" >> beam.Map(_write_summary, summary_path))
  result = p.run()
  result.wait_until_finish()
  with FileSystems.open(summary_path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
    summary = json.loads(f.read())
  counters: dict[str, int] = {}
  try:
    q = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(METRICS_NAMESPACE))
    for c in q["counters"]:
      counters[c.key.metric.name] = counters.get(c.key.metric.name, 0) + (c.committed or c.attempted or 0)
  except Exception as e:  # noqa: BLE001 -- some portable runners report no metrics; the summary file is the source of truth
    log.info("no Beam counters from %s: %s", runner, e)
  fixed, errors = fix_lines(items, summary)
  return summary, fixed, errors, counters


# ---------------------------------------------------------------------------------------------
# Pass 2: write with TFDS


class _Examples(beam.DoFn):
  """Work item -> (split index, (key, example)) of its good records, keyed as the single-process path keys them."""

  def __init__(self, kind: RecordKind, on_error: str):
    self._kind = kind
    self._on_error = on_error

  def process(self, item: WorkItem):
    for off, rec in item_records(item, self._kind):
      if rec is None:
        continue
      if isinstance(rec, DataError):
        if self._on_error == "raise":  # the validate pass saw none: the input changed since
          raise rec
        continue
      line = item.first_line + off
      split = self._kind.split(rec)
      beam.metrics.Metrics.counter(METRICS_NAMESPACE, f"examples_{split}").inc()
      yield SPLITS.index(split), (f"{item.file_index}:{line}", self._kind.example(rec, item.path, line))


class ShardWriter:
  """TFDS's ExampleWriter for ArrayRecord, also to gs://: array_record 0.8.6 reads gs:// (riegeli's GcsReader) but
  its writer opens local files only ("open() failed: No such file or directory; opening gs://..."), so a remote
  shard is written to the worker's disk and uploaded. Duck-typed (TFDS calls only ``write``) to import TFDS lazily."""

  def __init__(self, file_format: str = "array_record"):
    self.file_format = file_format

  def write(self, path, examples):
    from tensorflow_datasets.core import file_adapters

    adapter = file_adapters.ADAPTER_FOR_FORMAT[file_adapters.FileFormat(self.file_format)]
    dst = os.fspath(path)
    if not is_remote(dst):
      return adapter.write_examples(path, examples)
    with tempfile.TemporaryDirectory() as d:
      local = os.path.join(d, "shard")
      positions = adapter.write_examples(local, examples)
      with open(local, "rb") as src, paths.as_path(dst).open("wb") as out:
        shutil.copyfileobj(src, out, 16 << 20)
    return positions


def _by_split(pcoll, splits: Sequence[str]) -> dict:
  parts = pcoll | "BySplit" >> beam.Partition(lambda kv, n: kv[0], len(SPLITS))
  return {s: parts[SPLITS.index(s)] | f"Examples_{s}" >> beam.Values() for s in splits}


def write_dataset(name: str, out_dir: str, features: dict, params: dict, skipped: dict, split_counts: dict,
                  description: str, kind: str | None, unit: str, make_pcollection: Callable, runner: str,
                  options: PipelineOptions, num_shards: int | None = None) -> str:
  """:func:`prepared.build_dataset` on Beam: `make_pcollection(pipeline)` -> PCollection of (split index, (key,
  example)); `split_counts` are the validated counts, which the written split sizes must equal. Returns the dataset
  directory (a str: it may be a URL)."""
  import tensorflow_datasets as tfds

  # TFDS's Beam writer raises on an empty split: the splits are known before the pipeline is built.
  splits, metadata = prepared.splits_and_metadata(name, params, skipped, split_counts, kind, unit)

  def _split_generators(self, dl_manager, pipeline):  # `pipeline` in the signature: TFDS passes its Beam pipeline
    del self, dl_manager
    return _by_split(make_pcollection(pipeline), splits)

  def _example_writer(self):
    del self
    return ShardWriter()

  def _download_and_prepare(self, dl_manager, download_config):
    base._download_and_prepare(self, dl_manager, download_config)
    # Still inside TFDS's incomplete folder: a mismatch fails the run and leaves no dataset. The write pass re-reads
    # the inputs, so this catches inputs that changed since the validate pass and records lost on the way.
    written = {s: info.num_examples for s, info in self.info.splits.items()}
    expected = {s: split_counts[s] for s in splits}
    if written != expected:
      raise RuntimeError(f"dataset {name!r}: the write pass wrote {written} records per split, the validate pass "
                         f"counted {expected}; nothing was written (did the inputs change while preparing?)")

  base = prepared.builder_class(name, features)
  cls = types.new_class(name, (base,), {"skip_registration": True},
                        lambda ns: ns.update(name=name, _split_generators=_split_generators,
                                             _example_writer=_example_writer,
                                             _download_and_prepare=_download_and_prepare))
  builder = cls(examples=None, splits=splits, metadata=metadata, description=description, data_dir=out_dir,
                file_format="array_record")
  config = tfds.download.DownloadConfig(beam_runner=runner, beam_options=options, num_shards=num_shards)
  with tempfile.TemporaryDirectory() as downloads:  # TFDS creates a downloads/ folder otherwise
    builder.download_and_prepare(download_dir=downloads, download_config=config)
  return os.fspath(builder.data_dir)


# ---------------------------------------------------------------------------------------------
# Entry points


def existing_dataset(name: str, out_dir: str, params: dict) -> str | None:
  """:func:`prepared.existing_dataset` for local and remote (gs://) directories."""
  if not is_remote(out_dir):
    d = prepared.existing_dataset(name, out_dir, params)
    return None if d is None else os.fspath(d)
  d = paths.as_path(out_dir) / name / prepared.VERSION
  if not (d / "dataset_info.json").exists():
    return None
  meta = d / "metadata.json"
  old = json.loads(meta.read_text()).get("params") if meta.exists() else None
  if old != params:
    raise FileExistsError(f"{d} already holds a different dataset (prepared with {json.dumps(old)}, now "
                          f"{json.dumps(params)}); delete it or choose another out dir (--out) or name")
  log.info("reusing %s (prepared with the same inputs and parameters)", d)
  return os.fspath(d)


def dataset_counts(dataset_dir: str) -> tuple[dict[str, int], dict[str, int]]:
  """(records per split from dataset_info.json, skip counts from metadata.json) of a local or remote dataset."""
  d = paths.as_path(dataset_dir)
  info = json.loads((d / "dataset_info.json").read_text())
  sizes = {s["name"]: sum(int(n) for n in s.get("shardLengths", [])) for s in info.get("splits", [])}
  meta = d / "metadata.json"
  skipped = (json.loads(meta.read_text()).get("skipped") or {}) if meta.exists() else {}
  return sizes, skipped


def temp_dir(out_dir: str, name: str) -> str:
  """A fresh temporary folder under ``out_dir/.beam_tmp`` that every worker sees; :func:`cleanup` removes it."""
  return FileSystems.join(out_dir, ".beam_tmp", f"{name}-{uuid.uuid4().hex[:12]}")


def cleanup(tmp_dir: str) -> None:
  try:
    if is_remote(tmp_dir):
      # One delete per object: Beam's GCS delete goes through the batch API (fake-gcs-server, the tests' bucket,
      # answers it "Bad response: not multi-part"), and the folder holds one or two files.
      for f in FileSystems.match([tmp_dir.rstrip("/") + "/*"])[0].metadata_list:
        paths.as_path(f.path).unlink()
      return
    if FileSystems.exists(tmp_dir):
      FileSystems.delete([tmp_dir])
    parent = os.path.dirname(tmp_dir)
    if os.path.isdir(parent) and not os.listdir(parent):
      os.rmdir(parent)
  except Exception as e:  # noqa: BLE001 -- leaving a temp folder behind is not worth failing a finished dataset for
    log.warning("could not remove %s: %s", tmp_dir, e)


def _log_skips(errors: Sequence[DataError]) -> None:
  per: dict[str, int] = {}
  for e in errors:
    n = per[e.reason] = per.get(e.reason, 0) + 1
    log.warning("skipping bad record %s%s", e,
                " (further ones not logged)" if n == records_lib._LOGGED_PER_REASON else "")


@dataclasses.dataclass(frozen=True)
class BeamSettings:
  """Where and how a preparation runs on Beam. `split_bytes`: work item size of big uncompressed files (tests make
  it tiny). `num_shards`: a fixed shard count (TFDS's size-based count otherwise). `stage_records` (records built
  in the launcher, e.g. WordNet): write them to the temp folder and read them back instead of ``beam.Create``,
  whose data travels inside the job graph (too big for Dataflow's request limit); default: stage unless the runner
  is the DirectRunner."""
  runner: str = "DirectRunner"
  options: PipelineOptions | str | Sequence[str] | None = None
  split_bytes: int = SPLIT_BYTES
  num_shards: int | None = None
  stage_records: bool | None = None


def prepare_files(kind: RecordKind, files: Sequence[str], out_dir: str, name: str, *, params: dict, features: dict,
                  description: str, meta_kind: str | None, unit: str, on_error: str,
                  settings: BeamSettings | None = None) -> str:
  """Validate `files` as `kind` (pass 1), then write ``out_dir/name/1.0.0`` (pass 2); `params` etc. as the
  single-process path of the kind writes them (so either path reuses, or refuses, the other's dataset)."""
  settings = settings or BeamSettings()
  if on_error not in records_lib.ON_ERROR:
    raise ValueError(f"on_error must be one of {records_lib.ON_ERROR}, got {on_error!r}")
  existing = existing_dataset(name, out_dir, params)
  if existing is not None:
    return existing
  items, file_error = plan(files, kind, settings.split_bytes)
  if file_error is not None and on_error == "skip":
    raise file_error  # what the single-process path ends with, whatever the files before it hold
  tmp_dir = temp_dir(out_dir, name)
  try:
    t0 = time.perf_counter()
    summary, items, errors, counters = validate_inputs(
        items, kind, settings.runner, pipeline_options(settings.options, "validate"), tmp_dir)
    if errors and on_error == "raise":
      if summary["bad_total"] > 1:
        log.warning("%s: %d bad records in all; the first one:", name, summary["bad_total"])
      raise errors[0]
    if file_error is not None:
      raise file_error
    _log_skips(errors)
    skipped = {r: summary["skipped"][r] for r in kind.reasons if summary["skipped"].get(r)}
    split_counts = summary["split_counts"]
    log.info("%s: %d good %s (%s), skipped %s, checked on %s in %.1f s (%d work items)", name, summary["records"],
             unit, split_counts, skipped or "none", settings.runner, time.perf_counter() - t0, len(items))
    if counters:
      log.info("%s: Beam counters %s", name, counters)

    def make(pipeline):
      return (pipeline
              | "WorkItems" >> beam.Create(items)
              | "Spread" >> beam.Reshuffle()
              | "Read" >> beam.ParDo(_Examples(kind, on_error)))

    return write_dataset(name, out_dir, features, params, skipped, split_counts, description, meta_kind, unit, make,
                         settings.runner, pipeline_options(settings.options, "write"), settings.num_shards)
  finally:
    cleanup(tmp_dir)


def _decode_staged(line: str):
  s, key, ex = json.loads(line)
  return s, (key, ex)


def prepare_records(records: Sequence[tuple[str, str, dict]], out_dir: str, name: str, *, params: dict,
                    features: dict, description: str, meta_kind: str | None, unit: str = "records",
                    settings: BeamSettings | None = None) -> str:
  """Write ``(split, key, example)`` records built in the launcher (small sets such as WordNet's) as
  ``out_dir/name/1.0.0`` on Beam: fed with ``beam.Create`` on the DirectRunner, staged as JSONL elsewhere."""
  settings = settings or BeamSettings()
  existing = existing_dataset(name, out_dir, params)
  if existing is not None:
    return existing
  split_counts, _ = prepared.split_records(records)
  stage = settings.stage_records
  if stage is None:
    stage = not is_local_runner(settings.runner)
  elements = [(SPLITS.index(s), (key, ex)) for s, key, ex in records]
  tmp_dir = temp_dir(out_dir, name)
  try:
    if stage:
      staged = FileSystems.join(tmp_dir, "records.jsonl")
      with FileSystems.create(staged, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        for s, (key, ex) in elements:
          f.write((json.dumps([s, key, ex]) + "\n").encode("utf-8"))

      def make(pipeline):
        return pipeline | "ReadStaged" >> beam.io.ReadFromText(staged) | "Decode" >> beam.Map(_decode_staged)
    else:

      def make(pipeline):
        return pipeline | "Records" >> beam.Create(elements) | "Spread" >> beam.Reshuffle()

    return write_dataset(name, out_dir, features, params, {}, split_counts, description, meta_kind, unit, make,
                         settings.runner, pipeline_options(settings.options, "write"), settings.num_shards)
  finally:
    cleanup(tmp_dir)


def write_jsonl(path: str, rows) -> None:
  """Rows as a JSONL file at a local path or URL (inputs a launcher builds for a file pipeline)."""
  with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
    for r in rows:
      f.write((json.dumps(r) + "\n").encode("utf-8"))

