"""File-system helpers shared by every command that writes an output folder.

`staged_output(dst)` yields a temporary sibling of `dst` that is renamed into place only when the block completes,
so a failure (bad tensor, wrong shape, full disk) never leaves a half-written destination behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def staged_output(dst: str | os.PathLike):
  """Yield a temporary directory that becomes `dst` on success and disappears on failure."""
  dst = Path(dst).resolve()
  if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
    raise FileExistsError(f"{dst}: destination exists and is not empty; choose a new path")
  dst.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.partial-", dir=dst.parent))
  try:
    yield tmp
    if dst.exists():
      dst.rmdir()
    os.replace(tmp, dst)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
