"""Debian package descriptions from apt's package lists and dpkg's status file (no apt bindings needed).

Every Debian/Ubuntu machine carries these deb822 files:

* ``/var/lib/dpkg/status``: the installed packages, each with its whole ``Description`` (short + long);
* ``/var/lib/apt/lists/*_Packages[.gz|.xz|.lz4|...]``: every package of the configured archives (about 63k for
  bookworm main). Since Debian 7 these hold only the short description and a ``Description-md5``; the long ones
  are in ``*_i18n_Translation-en*`` files, which apt fetches unless ``Acquire::Languages "none"`` (Debian's Docker
  images set that, so a fresh container has short descriptions for all packages and long ones only for the
  installed packages; ``apt-get update -o Acquire::Languages=en`` fetches the translations).

Description format (deb-control(5))::

    Description: short description (the synopsis)
     first line of the long description, wrapped text
     continues the paragraph.
     .
      two leading spaces: a verbatim line (lists, code), kept as is

A continuation line ``" ."`` separates paragraphs; wrapped lines are joined with spaces, verbatim lines keep their
line breaks. Translation files carry ``Description-en`` (same format) keyed by ``Description-md5``, the md5 of the
description text as it appears in the control file (``short + "\\n" + long lines + "\\n"``).

From these we build pretraining text (``package: short. long``), retrieval pairs (``short -> long`` and
``package name -> short``) and hard-negative groups (packages of the same ``Section``). Records are keyed by
their *source* package (``Source:`` without version, else the package), so that the binaries of one source
(``libfoo1``, ``libfoo-dev``, ``foo-doc`` often share a long description) land in one split.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pplx_jax.data.records import DataError, skip_or_raise

__all__ = ["DPKG_STATUS", "LISTS_DIR", "Package", "default_files", "parse_description", "read_stanzas",
           "read_packages", "pretraining_text", "retrieval_pairs", "unique_descriptions", "REASONS"]

DPKG_STATUS = "/var/lib/dpkg/status"
LISTS_DIR = "/var/lib/apt/lists"
INSTALL_HINT = (f"apt's package lists ({LISTS_DIR}/*_Packages*, filled by `apt-get update`) or dpkg's status file "
                f"({DPKG_STATUS}); pass files=[...] to read others")
REASONS = ("invalid_utf8", "malformed_stanza")
# Decompressors for what apt stores (Acquire::GzipIndexes / CompressionTypes). lz4 and zstd have no stdlib module:
# apt's own helper decompresses every format apt writes, the command-line tools are the fallback.
_PY_OPENERS = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open, ".lzma": lzma.open}
_TOOLS = {".lz4": ("lz4", "-dc"), ".zst": ("zstd", "-dc")}
_APT_HELPER = "/usr/lib/apt/apt-helper"


@dataclass(frozen=True)
class Package:
  package: str
  source: str  # the source package: the split key
  section: str
  short: str
  long: str  # "" when only the short description is known
  path: str  # the file and 1-based line of its stanza
  line: int

  @property
  def key(self) -> str:
    return self.source


# ---------------------------------------------------------------------------------------------
# Files


def default_files(lists_dir: str | Path = LISTS_DIR, status: str | Path | None = DPKG_STATUS) -> list[Path]:
  """dpkg's status file, then the Packages and English translation lists, sorted: a fixed reading order."""
  files = [Path(status)] if status is not None and Path(status).is_file() else []
  d = Path(lists_dir)
  if d.is_dir():
    names = sorted(p for p in d.iterdir() if p.is_file() and _is_list(p.name))
    files.extend(names)
  if not files:
    raise FileNotFoundError(f"no apt package lists or dpkg status found; {INSTALL_HINT}")
  return files


def _is_list(name: str) -> bool:
  base = name
  for ext in (*_PY_OPENERS, *_TOOLS):
    if base.endswith(ext):
      base = base[:-len(ext)]
      break
  return base.endswith("_Packages") or base.endswith("_Translation-en")


def _read_bytes(path: Path) -> bytes:
  suffix = path.suffix
  if suffix in _PY_OPENERS:
    with _PY_OPENERS[suffix](path, "rb") as f:
      return f.read()
  if suffix in _TOOLS:
    commands = []
    if Path(_APT_HELPER).is_file():
      commands.append([_APT_HELPER, "cat-file", str(path)])
    tool, flag = _TOOLS[suffix]
    if shutil.which(tool):
      commands.append([tool, flag, str(path)])
    for cmd in commands:
      r = subprocess.run(cmd, capture_output=True, check=False)
      if r.returncode == 0:
        return r.stdout
    raise DataError(path, None, "unreadable", f"cannot decompress {suffix} (needs {_APT_HELPER} or `{tool}`)")
  return path.read_bytes()


# ---------------------------------------------------------------------------------------------
# deb822 stanzas


def read_stanzas(path: str | Path, on_error: str = "raise", stats: dict | None = None
                 ) -> Iterator[tuple[int, dict[str, list[str]]]]:
  """(1-based line of the stanza, {field: [first line, continuation lines...]}) for every stanza of a file.

  A stanza with a line that is not UTF-8, a continuation line before any field, or a line that is neither
  ``Field: value`` nor a continuation raises :class:`DataError` naming the file and line, or with
  ``on_error="skip"`` is skipped whole and counted in ``stats[reason]``.
  """
  path = Path(path)
  stats = {} if stats is None else stats
  fields: dict[str, list[str]] = {}
  current: list[str] | None = None
  start, error = 0, None
  for line_no, raw in enumerate(_read_bytes(path).split(b"\n"), 1):
    if not raw.strip():
      if fields and error is None:
        yield start, fields
      elif error is not None:
        skip_or_raise(error, on_error, stats)
      fields, current, error = {}, None, None
      continue
    if not fields and error is None and current is None:
      start = line_no
    if error is not None:
      continue  # the rest of a bad stanza
    try:
      line = raw.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError as e:
      error = DataError(path, line_no, "invalid_utf8", f"invalid UTF-8 ({e.reason} at byte {e.start})")
      continue
    if line[0] in " \t":
      if current is None:
        error = DataError(path, line_no, "malformed_stanza", "continuation line before any field")
        continue
      current.append(line)
    elif ":" in line and not line.startswith("#"):
      name, _, value = line.partition(":")
      current = fields[name.strip()] = [value.strip()]
    elif line.startswith("#"):
      continue  # deb822 comment
    else:
      error = DataError(path, line_no, "malformed_stanza", f"not 'Field: value' nor a continuation: {line[:80]!r}")
  if error is not None:
    skip_or_raise(error, on_error, stats)
  elif fields:
    yield start, fields


def parse_description(lines: Sequence[str]) -> tuple[str, str]:
  """A ``Description`` field's lines -> (short, long). Long: paragraphs joined by a blank line, wrapped lines by
  spaces, verbatim lines (two leading spaces) kept on their own lines."""
  short = lines[0].strip() if lines else ""
  paragraphs: list[list[str]] = [[]]
  for raw in lines[1:]:
    body = raw[1:] if raw[:1] in (" ", "\t") else raw
    if body.strip() == ".":
      paragraphs.append([])
    elif body[:1] in (" ", "\t"):
      paragraphs[-1].append("\n" + body.rstrip())  # verbatim
    else:
      paragraphs[-1].append(body.strip())
  out = []
  for para in paragraphs:
    text = ""
    for piece in para:
      if piece.startswith("\n"):
        text = (text + piece) if text else piece[1:]
      else:
        text = f"{text} {piece}" if text and not text.endswith("\n") else text + piece
    if text.strip():
      out.append(text.strip("\n").rstrip())
  return short, "\n\n".join(out)


def _md5(lines: Sequence[str]) -> str:
  """Description-md5: md5 of the description as written in the control file, one trailing newline."""
  text = "\n".join([lines[0].strip(), *lines[1:]]) + "\n"
  return hashlib.md5(text.encode("utf-8")).hexdigest()


def _source_name(fields: dict[str, list[str]], package: str) -> str:
  value = fields.get("Source", [""])[0].strip()
  return value.split(" ", 1)[0] if value else package


def read_packages(files: Sequence[str | Path] | None = None, on_error: str = "raise", stats: dict | None = None
                  ) -> list[Package]:
  """One :class:`Package` per package name (sorted by name), from `files` (default :func:`default_files`).

  A package seen in several files keeps its first stanza, except that a long description found later (a
  translation file matched by ``Description-md5``, or another list) fills in a missing one. ``stats`` counts
  ``stanzas`` read, ``packages``, ``with_long`` and skipped bad stanzas by reason.
  """
  paths = default_files() if files is None else [Path(f) for f in files]
  stats = {} if stats is None else stats
  stats.setdefault("stanzas", 0)
  found: dict[str, Package] = {}
  pending_md5: dict[str, list[str]] = {}  # md5 -> package names still waiting for their long description
  long_by_md5: dict[str, str] = {}
  for path in paths:
    if not path.is_file():
      raise FileNotFoundError(f"apt/dpkg file {str(path)!r} not found; {INSTALL_HINT}")
    for line, fields in read_stanzas(path, on_error, stats):
      stats["stanzas"] += 1
      name = fields.get("Package", [""])[0].strip()
      desc = fields.get("Description") or fields.get("Description-en")
      if not name or not desc or not desc[0].strip():
        continue  # a stanza without a description (e.g. a dpkg status entry of a purged package) carries no text
      short, long = parse_description(desc)
      md5 = fields.get("Description-md5", [""])[0].strip() or (_md5(desc) if len(desc) > 1 else "")
      if "Description-en" in fields and "Package" in fields and "Version" not in fields:
        # a translation stanza: it only fills in long descriptions
        if md5 and long:
          long_by_md5.setdefault(md5, long)
          for waiting in pending_md5.pop(md5, []):
            p = found[waiting]
            found[waiting] = Package(p.package, p.source, p.section, p.short, long, p.path, p.line)
        continue
      if not long and md5 in long_by_md5:
        long = long_by_md5[md5]
      if long and md5:
        long_by_md5.setdefault(md5, long)
      old = found.get(name)
      if old is not None:
        if not old.long and long:
          found[name] = Package(old.package, old.source, old.section, old.short, long, old.path, old.line)
        continue
      found[name] = Package(name, _source_name(fields, name), fields.get("Section", [""])[0].strip(), short, long,
                            str(path), line)
      if not long and md5:
        pending_md5.setdefault(md5, []).append(name)
  packages = [found[k] for k in sorted(found)]
  stats["packages"] = len(packages)
  stats["with_long"] = sum(1 for p in packages if p.long)
  return packages


# ---------------------------------------------------------------------------------------------
# Derived text


def _sentence(text: str) -> str:
  text = text.strip()
  return text if not text or text[-1] in ".!?:" else text + "."


def pretraining_text(p: Package) -> str:
  """``"package: Short description. Long description..."``."""
  return f"{p.package}: {_sentence(p.short)}" + (f"\n{p.long}" if p.long else "")


PAIR_KINDS = ("short", "name")


def retrieval_pairs(packages: Sequence[Package], kinds: Sequence[str] = PAIR_KINDS) -> Iterator[dict]:
  """``{"query", "positive", "key", "group", "kind"}``: kind ``short`` (short -> long description, packages with
  a long one) and ``name`` (package name -> short description). Identical (query, positive) pairs come once (the
  binaries of one source often repeat their descriptions), in package-name order."""
  for k in kinds:
    if k not in PAIR_KINDS:
      raise ValueError(f"unknown apt pair kind {k!r}; known: {PAIR_KINDS}")
  seen: set[tuple[str, str]] = set()
  for p in packages:
    for kind in kinds:
      if kind == "short":
        if not p.long:
          continue
        q, d = p.short, p.long
      else:
        q, d = p.package, p.short
      if (q, d) in seen:
        continue
      seen.add((q, d))
      yield {"query": q, "positive": d, "key": p.key, "group": p.section, "kind": kind}


def unique_descriptions(packages: Sequence[Package]) -> list[Package]:
  """The first package (name order) of every distinct (short, long) description: the pretraining documents,
  without the hundreds of binaries that repeat their source's text (``-dbg``, per-architecture cross tools)."""
  seen: set[tuple[str, str]] = set()
  out = []
  for p in packages:
    if (p.short, p.long) not in seen:
      seen.add((p.short, p.long))
      out.append(p)
  return out
