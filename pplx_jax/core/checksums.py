"""CRC32C checksums of every file of a saved checkpoint step, so a corrupted step is refused naming the file.

Orbax renames a step into place only when it is complete, but nothing checks the bytes afterwards: a flipped byte
in an array file restores silently (3 values of `embed_tokens.weight` changed, measured). So, after a step is
committed, each process writes `STEP/checksums.process_<i>.json` for the files it wrote (the `ocdbt.process_<i>/`
folders are process i's; everything else — metadata, manifests — is process 0's), and a restore first checks every
listed file. One file per process keeps multi-process saves free of write races on a shared disk or bucket.

A step saved without (complete) checksums — by an older pplx-jax, or killed in the moment between orbax's commit and
the checksum write — is "unverified": `verify` accepts it (there is nothing to compare with) and says so.
"""

from __future__ import annotations

import json
import re
from typing import Iterator

from pplx_jax.core import paths
from pplx_jax.core.errors import UserError

PREFIX = "checksums.process_"
_OWNER = re.compile(r"(?:^|/)ocdbt\.process_(\d+)(?:/|$)")
_CHUNK = 8 << 20

try:
  import google_crc32c

  ALGORITHM = "crc32c"

  def _crc(f) -> str:
    c = google_crc32c.Checksum()
    for block in iter(lambda: f.read(_CHUNK), b""):
      c.update(block)
    return c.hexdigest().decode()
except ImportError:  # google-crc32c comes with google-cloud-storage; zlib's CRC32 is as good at catching bit flips
  import zlib

  ALGORITHM = "crc32"

  def _crc(f) -> str:
    v = 0
    for block in iter(lambda: f.read(_CHUNK), b""):
      v = zlib.crc32(block, v)
    return f"{v:08x}"


class CorruptCheckpointError(UserError):
  """A checkpoint file does not match the checksum written when it was saved (or is missing)."""

  def __init__(self, message: str, file: str):
    super().__init__(message)
    self.file = file


def _walk(root, rel: str = "") -> Iterator[str]:
  if not rel and paths.is_url(root):  # one listing request, not one per folder
    fs, key = paths.fs_and_key(root)
    key = key.rstrip("/")
    for f in sorted(fs.find(key)):
      r = f[len(key) + 1:]
      if not r.rsplit("/", 1)[-1].startswith(PREFIX):
        yield r
    return
  for child in sorted(root.iterdir(), key=lambda p: p.name):
    r = f"{rel}{child.name}"
    if child.is_dir():
      yield from _walk(child, r + "/")
    elif not child.name.startswith(PREFIX):
      yield r


def owner(rel: str) -> int:
  """The process that wrote a file of a step (its `ocdbt.process_<i>` folder; process 0 for everything else)."""
  m = _OWNER.search(rel)
  return int(m.group(1)) if m else 0


def file_checksum(path) -> str:
  with path.open("rb") as f:
    return _crc(f)


def write(step_dir, process_index: int = 0, process_count: int = 1) -> dict[str, str]:
  """Checksum this process's files of a committed step into STEP/checksums.process_<i>.json."""
  files = {rel: file_checksum(step_dir / rel) for rel in _walk(step_dir) if owner(rel) == process_index}
  doc = {"algorithm": ALGORITHM, "process_count": int(process_count), "files": files}
  paths.write_text_atomic(step_dir / f"{PREFIX}{process_index}.json", json.dumps(doc, indent=1, sort_keys=True),
                          tmp_name=f".{PREFIX}{process_index}.json.tmp")
  return files


def read(step_dir) -> dict[str, str] | None:
  """Every file's expected checksum, or None when the step has no complete set of checksum files."""
  docs = {}
  for p in step_dir.iterdir():
    if p.name.startswith(PREFIX) and p.name.endswith(".json"):
      try:
        docs[p.name] = json.loads(p.read_text())
        docs[p.name]["files"].items()
      except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise CorruptCheckpointError(f"{p}: checksum file is unreadable ({e})", str(p)) from None
  if not docs:
    return None
  count = {int(d.get("process_count", 1)) for d in docs.values()}
  if len(count) != 1 or set(docs) != {f"{PREFIX}{i}.json" for i in range(count.pop())}:
    return None  # a process had not written its checksums yet
  if {d.get("algorithm") for d in docs.values()} != {ALGORITHM}:
    return None  # written with the other CRC; cannot compare here
  files = {}
  for d in docs.values():
    files.update(d["files"])
  return files


def verify(step_dir) -> bool:
  """True when every file of the step matches its checksum, False when the step has none to compare with; raises
  CorruptCheckpointError naming the first file that differs or is missing."""
  expected = read(step_dir)
  if expected is None:
    return False
  for rel, want in sorted(expected.items()):
    path = step_dir / rel
    if not path.exists():
      raise CorruptCheckpointError(f"{path}: checkpoint file is missing (listed in {step_dir}/{PREFIX}*.json)",
                                   str(path))
    got = file_checksum(path)
    if got != want:
      raise CorruptCheckpointError(f"{path}: checkpoint file is corrupt ({ALGORITHM} {got}, saved as {want})",
                                   str(path))
  return True
