"""Docstrings of the installed Python standard library, read from source with :mod:`ast` (nothing is imported).

Every machine that runs pplx-jax has one: ``sysconfig.get_paths()["stdlib"]`` (about 1,000 modules for CPython
3.11). From it we build

* pretraining text: one document per documented module, class, function or method (``qualified.name: docstring``);
* retrieval pairs: kind ``code`` (the docstring's summary line -> the definition's source without its docstring)
  and kind ``doc`` (summary -> the rest of the docstring, when there is a rest);
* hard-negative groups: the definitions of the same module.

Only public names are used (no ``_private`` or dunder definitions, no functions nested in functions); test
packages (``test``, ``tests``, ``idle_test``), ``site-packages`` and ``__pycache__`` are skipped. Files are read in
sorted path order and definitions in source order, so the records are the same on every run. A module's records
share its split key (the dotted module name): held-out modules are unseen as a whole.

A file that is not valid UTF-8 (or its PEP 263 coding) or not valid Python raises :class:`DataError` naming the
file and line, or with ``on_error="skip"`` is skipped and counted (``stats["invalid_utf8"]``,
``stats["syntax_error"]``).
"""

from __future__ import annotations

import ast
import inspect
import io
import os
import sysconfig
import textwrap
import tokenize
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pplx_jax.data.records import DataError, skip_or_raise

__all__ = ["Doc", "stdlib_dir", "module_files", "read_docs", "pretraining_text", "retrieval_pairs", "summary",
           "REASONS", "PAIR_KINDS"]

REASONS = ("invalid_utf8", "syntax_error")
PAIR_KINDS = ("code", "doc")
SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})
MAX_CODE_CHARS = 4000  # the contrastive stages truncate to a few hundred tokens anyway


@dataclass(frozen=True)
class Doc:
  module: str  # dotted module name: the split key
  qualname: str  # "json.dumps", "json.JSONEncoder.encode", or the module name for its own docstring
  kind: str  # "module", "class", "function"
  docstring: str  # inspect.cleandoc'ed
  code: str  # the definition's source without its docstring ("" for modules)
  path: str
  line: int

  @property
  def key(self) -> str:
    return self.module


def stdlib_dir() -> Path:
  return Path(sysconfig.get_paths()["stdlib"])


def module_files(root: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
  """(dotted module name, file) of every ``.py`` under `root` (default: the standard library), sorted by path."""
  root = stdlib_dir() if root is None else Path(root)
  if not root.is_dir():
    raise FileNotFoundError(f"Python source directory {str(root)!r} not found (the standard library's sources are "
                            "part of every CPython install; Debian: python3.11 / libpython3.11-stdlib)")
  out = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
    rel = Path(dirpath).relative_to(root)
    if rel.parts and not (Path(dirpath) / "__init__.py").is_file():
      dirnames[:] = []  # not a package (config-3.11-x86_64-linux-gnu, lib-dynload...)
      continue
    for f in sorted(filenames):
      if not f.endswith(".py"):
        continue
      parts = list(rel.parts) + ([] if f == "__init__.py" else [f[:-3]])
      if not parts or not all(p.isidentifier() for p in parts):
        continue
      out.append((".".join(parts), Path(dirpath) / f))
  out.sort(key=lambda mf: str(mf[1]))
  if not out:
    raise FileNotFoundError(f"no Python modules under {str(root)!r}")
  return out


def summary(docstring: str) -> str:
  """The docstring's first paragraph on one line."""
  para = docstring.strip().split("\n\n", 1)[0]
  return " ".join(para.split())


def _rest(docstring: str) -> str:
  parts = docstring.strip().split("\n\n", 1)
  return parts[1].strip() if len(parts) > 1 else ""


def _without_docstring(source_lines: list[str], node) -> str:
  """The definition's source lines, its docstring statement cut out, dedented."""
  first, last = node.lineno - 1, node.end_lineno
  doc = node.body[0]
  lines = source_lines[first:doc.lineno - 1] + source_lines[doc.end_lineno:last]
  code = textwrap.dedent("\n".join(lines)).strip("\n") if lines else ""
  return code[:MAX_CODE_CHARS]


def _public(name: str) -> bool:
  return not name.startswith("_")


def _walk(tree: ast.Module, module: str, lines: list[str], path: str) -> Iterator[Doc]:
  doc = (ast.get_docstring(tree) or "").strip()
  if doc:
    yield Doc(module, module, "module", doc, "", path, 1)

  def visit(body, prefix: str):
    for node in body:
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and _public(node.name):
        name = f"{prefix}.{node.name}"
        d = (ast.get_docstring(node) or "").strip()
        if d:
          kind = "class" if isinstance(node, ast.ClassDef) else "function"
          yield Doc(module, name, kind, d, _without_docstring(lines, node), path, node.lineno)
        if isinstance(node, ast.ClassDef):
          yield from visit(node.body, name)

  yield from visit(tree.body, module)


def read_docs(root: str | os.PathLike | None = None, on_error: str = "raise", stats: dict | None = None,
              modules: Sequence[str] | None = None) -> list[Doc]:
  """Every documented public definition under `root` (default: the standard library), in path and source order.

  ``modules``: only these dotted names and their submodules. ``stats`` counts ``files``, ``docs`` and the skipped
  files by reason.
  """
  stats = {} if stats is None else stats
  stats.setdefault("files", 0)
  out: list[Doc] = []
  for module, path in module_files(root):
    if modules is not None and not any(module == m or module.startswith(m + ".") for m in modules):
      continue
    raw = path.read_bytes()
    try:
      tree = ast.parse(raw, filename=str(path))
    except SyntaxError as e:
      reason = "invalid_utf8" if "decode" in str(e.msg) or "codec" in str(e.msg) else "syntax_error"
      skip_or_raise(DataError(path, e.lineno, reason, f"cannot parse: {e.msg}"), on_error, stats)
      continue
    except (UnicodeDecodeError, ValueError) as e:  # ValueError: null bytes
      skip_or_raise(DataError(path, None, "invalid_utf8", f"cannot decode: {e}"), on_error, stats)
      continue
    stats["files"] += 1
    # ast decoded with the file's PEP 263 coding; source lines for the code segments must be decoded the same way.
    lines = tokenize.TextIOWrapper(io.BytesIO(raw), tokenize.detect_encoding(io.BytesIO(raw).readline)[0]).read()
    out.extend(_walk(tree, module, lines.splitlines(), str(path)))
  stats["docs"] = len(out)
  return out


def pretraining_text(d: Doc) -> str:
  return f"{d.qualname}: {d.docstring}"


def retrieval_pairs(docs: Sequence[Doc], kinds: Sequence[str] = PAIR_KINDS, min_words: int = 3) -> Iterator[dict]:
  """``{"query", "positive", "key", "group", "kind"}`` per documented definition whose summary has at least
  `min_words` words: kind ``code`` (summary -> source without the docstring; not for modules) and ``doc``
  (summary -> the rest of the docstring). Identical (query, positive) pairs come once."""
  for k in kinds:
    if k not in PAIR_KINDS:
      raise ValueError(f"unknown pydoc pair kind {k!r}; known: {PAIR_KINDS}")
  seen: set[tuple[str, str]] = set()
  for d in docs:
    q = summary(d.docstring)
    if len(q.split()) < min_words:
      continue
    for kind in kinds:
      pos = d.code if kind == "code" else _rest(d.docstring)
      if not pos.strip() or (q, pos) in seen:
        continue
      seen.add((q, pos))
      yield {"query": q, "positive": pos, "key": d.key, "group": d.module, "kind": kind}
