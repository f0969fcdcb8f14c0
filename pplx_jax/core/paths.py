"""Every user path — local or `gs://` — through one abstraction, and output folders that appear only when complete.

- `as_path(p)`: a `gs://bucket/...` URL becomes an `etils.epath.Path` (what orbax and TFDS use; gcsfs underneath,
  tensorstore's own GCS driver for checkpoint arrays); a local path stays a `pathlib.Path`, relative paths relative
  to the working directory. Never `os.path` / `Path.resolve()` on a URL: `Path("gs://b/x")` is `gs:/b/x`.
- `configure_gcs()`: with `STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT` (a local GCS server, the emulator
  convention) every component talks to that endpoint with anonymous credentials — gcsfs (endpoint_url, token
  'anon'), tensorstore (`TENSORSTORE_GCS_HTTP_URL`), array_record's google-cloud-cpp reader
  (`CLOUD_STORAGE_EMULATOR_ENDPOINT`), google-cloud-storage and Beam (`STORAGE_EMULATOR_HOST` itself). gcsfs's
  listing cache is off everywhere: a stale listing hides a step another process (or orbax's rename) just wrote.
- `write_text_atomic`, `copy_tree`, `move`, `rmtree`, `glob_files`, `expand_files`, `size`: the file operations the project needs,
  the same call for both kinds of path.
- `staged_output(dst)`: a temporary folder that becomes `dst` on success (a local sibling renamed into place; for
  a bucket, a local folder uploaded when complete) and disappears on failure.
- `local_copy(p)` / `cached_local_copy(p)`: a local file or folder for the libraries that only read local files
  (tokenizers, safetensors, GGUF, sentence-transformers); local paths pass through untouched.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Union

SCHEMES = ("gs://",)
AnyPath = Union[Path, "epath.Path"]  # noqa: F821


def is_url(path) -> bool:
  return str(path).startswith(SCHEMES)


_CONFIGURED: str | None = None
# tensorstore's and array_record's (google-cloud-cpp's) names for the emulator's endpoint
_DERIVED = ("TENSORSTORE_GCS_HTTP_URL", "CLOUD_STORAGE_EMULATOR_ENDPOINT")


def configure_gcs() -> None:
  """Point gcsfs, tensorstore, array_record and google-cloud-storage at STORAGE_EMULATOR_HOST when it is set, at
  Google Cloud Storage (default credentials) when not; idempotent, redone when the variable changes."""
  global _CONFIGURED
  raw = os.environ.get("STORAGE_EMULATOR_HOST", "")
  if _CONFIGURED == raw:
    return
  import fsspec
  opts = {"use_listings_cache": False}
  emulator = {}
  if raw:
    host = raw if raw.startswith(("http://", "https://")) else f"http://{raw}"
    # The emulator has no gRPC storage-control API: gcsfs's bucket-type probe would wait 60 s per bucket on it.
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    for var in _DERIVED:  # always from STORAGE_EMULATOR_HOST: a stale one would send reads to another server
      os.environ[var] = host
    emulator = dict(endpoint_url=host, token="anon")
  elif _CONFIGURED:  # the emulator was named before and no longer is: its derived endpoints go too
    for var in _DERIVED:
      os.environ.pop(var, None)
  for proto in ("gs", "gcs"):
    conf = dict(fsspec.config.conf.get(proto, {}))
    if _CONFIGURED:  # drop the previous emulator's endpoint (a user's own fsspec settings stay)
      conf.pop("endpoint_url", None)
      conf.pop("token", None)
    fsspec.config.conf[proto] = dict(conf, **opts, **emulator)
  fsspec.AbstractFileSystem.clear_instance_cache()
  from etils.epath import backend as epath_backend
  epath_backend.fsspec_backend._get_filesystem.cache_clear()  # epath keeps its own gcsfs instance per protocol
  _CONFIGURED = raw


def as_path(path) -> AnyPath:
  """The path object for a user path: epath.Path for gs://, pathlib.Path otherwise (relative stays relative)."""
  if is_url(path):
    configure_gcs()
    from etils import epath
    return epath.Path(str(path))
  if hasattr(path, "_backend") or type(path).__module__.startswith("etils"):
    return path
  return Path(path)


def absolute(path) -> AnyPath:
  """A local path made absolute (symlinks resolved, as before); a URL as it is."""
  p = as_path(path)
  return p if is_url(p) else p.resolve()


def fs_and_key(path):
  """(fsspec filesystem, path without the scheme) for a URL."""
  configure_gcs()
  import fsspec
  fs, key = fsspec.core.url_to_fs(str(path))
  return fs, key


def write_text_atomic(path, text: str, tmp_name: str | None = None) -> AnyPath:
  """`path` holds all of `text` or its old content, never part: a local file is written beside it and renamed into
  place; a bucket object is one upload, atomic already (a bucket has no rename: gcsfs would copy, then delete)."""
  p = as_path(path)
  if is_url(p):
    p.write_text(text)
    return p
  p.parent.mkdir(parents=True, exist_ok=True)
  tmp = p.with_name(tmp_name or f"{p.name}.tmp")
  tmp.write_text(text)
  tmp.replace(p)
  return p


def glob_files(pattern: str) -> list[AnyPath]:
  """The files a bucket URL names (a glob: every match, sorted; else the file itself); FileNotFoundError if none."""
  import glob as glob_lib
  fs, key = fs_and_key(pattern)
  scheme = str(pattern).split("://", 1)[0]
  if glob_lib.has_magic(key):
    found = [as_path(f"{scheme}://{m}") for m in sorted(fs.glob(key)) if fs.isfile(m)]
    if not found:
      raise FileNotFoundError(f"input pattern {pattern!r} matched no file")
    return found
  if not fs.isfile(key):
    raise FileNotFoundError(f"input file {pattern!r} does not exist")
  return [as_path(pattern)]


def expand_files(paths_or_globs) -> list[AnyPath]:
  """Files named by paths and globs (``**`` recursive), in the given order, each glob sorted; a gs:// URL or glob
  gives bucket paths, read in place.

  A glob that matches no file, or a path that is not a file, raises ``FileNotFoundError`` naming it.
  """
  import glob as glob_lib
  if isinstance(paths_or_globs, (str, os.PathLike)):
    paths_or_globs = [paths_or_globs]
  files: list[AnyPath] = []
  for pattern in paths_or_globs:
    if is_url(pattern):
      files.extend(glob_files(str(pattern)))
      continue
    pattern = os.fspath(pattern)
    if glob_lib.has_magic(pattern):
      matches = [m for m in sorted(glob_lib.glob(pattern, recursive=True)) if os.path.isfile(m)]
      if not matches:
        raise FileNotFoundError(f"input pattern {pattern!r} matched no file")
      files.extend(Path(m) for m in matches)
    elif os.path.isfile(pattern):
      files.append(Path(pattern))
    else:
      raise FileNotFoundError(f"input file {pattern!r} does not exist")
  if not files:
    raise FileNotFoundError("no input files given")
  return files


def size(path) -> int:
  """A file's size in bytes, local or in a bucket."""
  if is_url(path):
    fs, key = fs_and_key(path)
    return int(fs.size(key))
  return os.stat(path).st_size


def copy_tree(src, dst) -> None:
  """Copy a file or folder between any two paths (local ↔ bucket)."""
  src, dst = as_path(src), as_path(dst)
  if not is_url(src) and not is_url(dst):
    if Path(src).is_dir():
      shutil.copytree(src, dst, dirs_exist_ok=True)
    else:
      Path(dst).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(src, dst)
    return
  if is_url(src) and is_url(dst):
    fs, a = fs_and_key(src)
    _, b = fs_and_key(dst)
    fs.copy(a, b, recursive=True)
    return
  if is_url(dst):
    fs, key = fs_and_key(dst)
    if Path(src).is_dir():
      for f in sorted(Path(src).rglob("*")):
        if f.is_file():
          fs.put_file(str(f), f"{key}/{f.relative_to(src).as_posix()}")
    else:
      fs.put_file(str(src), key)
    return
  fs, key = fs_and_key(src)
  if fs.isdir(key):
    for f in fs.find(key):
      rel = f[len(key.rstrip("/")) + 1:]
      out = Path(dst) / rel
      out.parent.mkdir(parents=True, exist_ok=True)
      fs.get_file(f, str(out))
  else:
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    fs.get_file(key, str(dst))


def move(src, dst) -> None:
  """Move a folder within one file system (a bucket has no folders to rename: copy, then delete)."""
  src, dst = as_path(src), as_path(dst)
  if not is_url(src):
    shutil.move(str(src), str(dst))
    return
  copy_tree(src, dst)
  rmtree(src)


def rmtree(path) -> None:
  p = as_path(path)
  if is_url(p):
    fs, key = fs_and_key(p)
    if fs.exists(key):
      fs.rm(key, recursive=True)
  else:
    shutil.rmtree(p, ignore_errors=True)


def _nonempty(dst) -> bool:
  return dst.exists() and (not dst.is_dir() or any(True for _ in dst.iterdir()))


@contextlib.contextmanager
def staged_output(dst):
  """Yield a temporary local directory that becomes `dst` on success and disappears on failure."""
  dst = absolute(dst)
  if _nonempty(dst):
    raise FileExistsError(f"{dst}: destination exists and is not empty; choose a new path")
  if is_url(dst):
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.partial-"))
    try:
      yield tmp
      copy_tree(tmp, dst)
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
    return
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


_CACHE: dict[str, Path] = {}


def local_copy(path, into: str | os.PathLike | None = None) -> Path:
  """A local file or folder with the content of `path` (itself when it is local)."""
  p = as_path(path)
  if not is_url(p):
    return Path(p)
  root = Path(into) if into is not None else Path(tempfile.mkdtemp(prefix="pplx-gcs-"))
  if into is None:
    atexit.register(shutil.rmtree, root, ignore_errors=True)
  out = root / p.name
  copy_tree(p, out)
  return out


def cached_local_copy(path) -> Path:
  """`local_copy` made once per process and URL (read-only inputs: tokenizers, datasets, model folders)."""
  if not is_url(path):
    return Path(path)
  key = str(path).rstrip("/")
  if key not in _CACHE or not _CACHE[key].exists():
    _CACHE[key] = local_copy(key)
  return _CACHE[key]
