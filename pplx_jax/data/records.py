"""Reading the user's text files: one document per record, with file and line for every error.

Formats, chosen by file suffix (a trailing ``.gz`` is decompressed):

* ``.jsonl``: one JSON object per line; the document is the string in ``field``. Whitespace-only lines
  carry no record and are ignored.
* ``.parquet``: the document is column ``field`` of each row; the "line" is the 0-based row index.
  A file without that column is an error regardless of ``on_error`` (it is not one bad record).
* anything else (``.txt``, ...): one document per line, line ending removed. An empty line is an
  empty document, i.e. a bad record.

Bad records: invalid UTF-8, invalid JSON (or a JSON value that is not an object), a missing (or null)
field, a non-string field, empty (whitespace-only) text. With ``on_error="raise"`` the first one raises
:class:`DataError` naming ``file:line``; with ``on_error="skip"`` it is logged (the first few per
reason) and counted in ``stats[reason]``.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pplx_jax.core import paths
from pplx_jax.core.errors import UserError

log = logging.getLogger(__name__)

REASONS = ("invalid_utf8", "invalid_json", "missing_field", "non_string_field", "empty_text")
ON_ERROR = ("raise", "skip")
_LOGGED_PER_REASON = 10


class DataError(UserError):
  """A bad input record (or input file); the message starts with ``file:line``."""

  def __init__(self, path, line: int | None, reason: str, detail: str):
    self.path = str(path)
    self.line = line
    self.reason = reason
    where = self.path if line is None else f"{self.path}:{line}"
    super().__init__(f"{where}: {detail}")


# Files named by paths and globs, local or gs://: the one expander (core.paths, where the tokenizer trainer uses it too).
expand_inputs = paths.expand_files


def input_params(files) -> list[dict]:
  """The ``inputs`` of a prepared dataset's params: each file's absolute path (a URL as it is) and size."""
  return [{"path": str(paths.absolute(f)), "bytes": paths.size(f)} for f in files]


def file_format(path: str | os.PathLike) -> str:
  """``"jsonl"``, ``"parquet"`` or ``"text"``, from the suffix (ignoring a final ``.gz``)."""
  name = Path(path).name.lower()
  if name.endswith(".gz"):
    name = name[:-3]
  if name.endswith(".jsonl"):
    return "jsonl"
  if name.endswith(".parquet"):
    return "parquet"
  return "text"


def open_binary(path: Path):
  """The file's bytes, gunzipped when the name ends in .gz (a bucket file streamed through `core.paths`)."""
  gz = path.name.lower().endswith(".gz")
  if paths.is_url(path):
    raw = paths.as_path(path).open("rb")
    return gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw
  return gzip.open(path, "rb") if gz else open(path, "rb")


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
  with open_binary(path) as f:
    for line_no, raw in enumerate(f, start=1):
      yield line_no, raw


def _text_records(path: Path, field: str) -> Iterator[tuple[int, str | DataError]]:
  del field
  return text_lines(path)


def jsonl_objects(path: Path, blank_lines: str = "skip") -> Iterator[tuple[int, Any]]:
  """(1-based line, parsed JSON value) for every line, or a DataError for invalid UTF-8 or JSON: the one JSONL
  reader of the project (prepared record kinds, `embed` inputs, metrics files). Blank lines carry no record
  (`blank_lines="skip"`) or are a bad record of their own (`"error"`, for inputs where every line is one row)."""
  for line_no, raw in _lines(path):
    obj = decode_jsonl_line(raw, path, line_no)
    if obj is BLANK:
      if blank_lines == "error":
        yield line_no, DataError(path, line_no, "empty_text", "empty line")
      continue
    yield line_no, obj


def text_lines(path: Path) -> Iterator[tuple[int, str | DataError]]:
  """(1-based line, the decoded line without its line ending) of a plain text file, or a DataError for invalid
  UTF-8."""
  for line_no, raw in _lines(path):
    yield line_no, decode_text_line(raw, path, line_no)


# One line's decoding, shared by the readers above (a whole local file) and data/beam.py (byte ranges of any file).
BLANK = object()  # decode_jsonl_line's answer for a whitespace-only line: no record (a JSON `null` line is None)


def decode_text_line(raw: bytes, path, line_no: int) -> str | DataError:
  """A plain text line without its line ending, or a DataError for invalid UTF-8."""
  try:
    return raw.decode("utf-8").rstrip("\r\n")
  except UnicodeDecodeError as e:
    return DataError(path, line_no, "invalid_utf8", f"invalid UTF-8 ({e.reason} at byte {e.start})")


def decode_jsonl_line(raw: bytes, path, line_no: int) -> Any:
  """A JSONL line's JSON value, a DataError (invalid UTF-8 or JSON), or :data:`BLANK` for a whitespace-only line."""
  line = decode_text_line(raw, path, line_no)
  if isinstance(line, DataError):
    return line
  if not line.strip():
    return BLANK
  try:
    return json.loads(line)
  except json.JSONDecodeError as e:
    return DataError(path, line_no, "invalid_json", f"invalid JSON ({e.msg} at column {e.colno})")


def parquet_rows(path: Path, columns: Sequence[str], required: Sequence[str], batch_size: int = 8192
                 ) -> Iterator[tuple[int, dict]]:
  """(0-based row, {column: value}) of the `columns` present in the file; a missing `required` column raises."""
  import pyarrow.parquet as pq

  pf = pq.ParquetFile(paths.as_path(path).open("rb") if paths.is_url(path) else path)
  names = pf.schema_arrow.names
  missing = [c for c in required if c not in names]
  if missing:
    raise DataError(path, None, "missing_field", f"parquet file has no column {missing[0]!r} (columns: {names})")
  row = 0
  for batch in pf.iter_batches(columns=[c for c in columns if c in names], batch_size=batch_size):
    for obj in batch.to_pylist():
      yield row, obj
      row += 1


def _jsonl_records(path: Path, field: str) -> Iterator[tuple[int, str | DataError]]:
  for line_no, record in jsonl_objects(path):
    yield line_no, record if isinstance(record, DataError) else jsonl_text(record, field, path, line_no)


def jsonl_text(record, field: str, path, line_no: int) -> str | DataError:
  """The document of a JSONL line's value: its string `field` (the value must be an object)."""
  if not isinstance(record, dict):
    return DataError(path, line_no, "invalid_json", f"expected a JSON object, got {type(record).__name__}")
  return field_value(record.get(field), field, path, line_no)


def field_value(value, field: str, path, line_no: int) -> str | DataError:
  """A text field's value as str (bytes decoded), or the DataError of a missing, non-string or non-UTF-8 one."""
  if value is None:
    return DataError(path, line_no, "missing_field", f"record has no {field!r} field")
  if isinstance(value, bytes):
    try:
      return value.decode("utf-8")
    except UnicodeDecodeError as e:
      return DataError(path, line_no, "invalid_utf8", f"field {field!r}: invalid UTF-8 ({e.reason} at byte {e.start})")
  if not isinstance(value, str):
    return DataError(path, line_no, "non_string_field", f"field {field!r} is a {type(value).__name__}, not a string")
  return value


def _parquet_records(path: Path, field: str) -> Iterator[tuple[int, str | DataError]]:
  for row, obj in parquet_rows(path, [field], [field]):
    yield row, field_value(obj[field], field, path, row)


_READERS = {"text": _text_records, "jsonl": _jsonl_records, "parquet": _parquet_records}


def iter_text_records(
    paths_or_globs: str | os.PathLike | Sequence[str | os.PathLike],
    field: str = "text",
    on_error: str = "raise",
    stats: dict | None = None,
    log_skipped: bool = True,
) -> Iterator[tuple[str, int, str]]:
  """Yield ``(source_file, line_no, text)`` for every good record of every input file, in order.

  ``line_no`` is 1-based for text and JSONL files and the 0-based row index for parquet files.
  ``stats`` (optional, updated in place) counts ``records`` (yielded) and each skipped reason;
  with ``log_skipped`` the first few skipped records of each reason are logged (warning).
  """
  if on_error not in ON_ERROR:
    raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
  stats = {} if stats is None else stats
  stats.setdefault("records", 0)
  files = expand_inputs(paths_or_globs)
  for path in files:
    reader = _READERS[file_format(path)]
    for line_no, text in reader(path, field):
      if not isinstance(text, DataError) and not text.strip():
        text = DataError(path, line_no, "empty_text", "empty text")
      if isinstance(text, DataError):
        skip_or_raise(text, on_error, stats, log_skipped)
        continue
      stats["records"] += 1
      yield str(path), line_no, text


def skip_or_raise(err: DataError, on_error: str, stats: dict, log_skipped: bool = True) -> None:
  """The bad-record policy every reader shares: raise, or count by reason (logging the first few) and go on."""
  if on_error == "raise":
    raise err
  n = stats.get(err.reason, 0) + 1
  stats[err.reason] = n
  if log_skipped and n <= _LOGGED_PER_REASON:
    log.warning("skipping bad record %s%s", err, " (further ones not logged)" if n == _LOGGED_PER_REASON else "")


def skipped(stats: dict) -> dict:
  """The skip counts of a ``stats`` dict filled by :func:`iter_text_records` (reasons with a count)."""
  return {r: stats[r] for r in REASONS if stats.get(r)}


def read_jsonl(path: str | os.PathLike) -> list[dict]:
  """Every object of a JSONL file such as a run's metrics.jsonl, local or gs:// ([] when the file does not exist)."""
  path = paths.as_path(path)  # a bucket file is streamed (open_binary)
  if not path.is_file():
    return []
  rows = []
  for _, obj in jsonl_objects(path):
    if isinstance(obj, DataError):
      raise obj
    rows.append(obj)
  return rows
