"""The package's layering, checked from the source: imports only go down, and no module imports itself round a cycle.

    cli -> recipe -> stages -> eval -> inference -> data | objectives -> convert -> models -> core

Every import counts, function-level ones included (they hide dependencies but still create them). A module may
import modules of its own layer, or of any layer below it; `data` and `objectives` sit side by side and do not import
each other. Argument parsing and error printing belong to `cli` alone.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pplx_jax"
LAYERS = ("cli", "recipe", "stages", "eval", "inference", ("data", "objectives"), "convert", "models", "core")
RANK = {name: len(LAYERS) - i for i, layer in enumerate(LAYERS)
        for name in (layer if isinstance(layer, tuple) else (layer,))}


def module_name(path: Path) -> str:
  rel = path.relative_to(PACKAGE.parent).with_suffix("")
  parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
  return ".".join(parts)


def modules() -> dict[str, Path]:
  return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
  """The pplx_jax modules `path` imports anywhere in its body (`from pkg import mod` counts as mod)."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names if a.name.startswith("pplx_jax"))
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pplx_jax") and node.level == 0:
      for a in node.names:
        sub = f"{node.module}.{a.name}"
        out.add(sub if sub in known else node.module)
  return {m for m in out if m in known}


def import_graph() -> dict[str, set[str]]:
  mods = modules()
  return {m: imports_of(p, set(mods)) - {m} for m, p in mods.items()}


def layer_of(module: str) -> str | None:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
  problems = []
  for src, deps in sorted(graph.items()):
    a = layer_of(src)
    for dst in sorted(deps):
      b = layer_of(dst)
      if a is None or b is None:
        problems.append(f"{src} -> {dst}: the package root holds no code (only pplx_jax/__init__.py)")
      elif a not in RANK or b not in RANK:
        problems.append(f"{src} -> {dst}: {a if a not in RANK else b!r} is not a layer of {LAYERS}")
      elif a != b and RANK[b] >= RANK[a]:
        problems.append(f"{src} ({a}) imports {dst} ({b}): imports must go down {' -> '.join(map(str, LAYERS))}")
  return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan), each as a sorted list."""
  index, low, on_stack, stack, out = {}, {}, set(), [], []
  counter = [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in graph.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_the_layers_exist_and_nothing_is_loose_at_the_root():
  mods = modules()
  assert {layer_of(m) for m in mods} - {None} == set(RANK)
  loose = sorted(str(p.relative_to(PACKAGE)) for p in mods.values() if p.parent == PACKAGE and p.name != "__init__.py")
  assert not loose, f"modules at the package root: {loose}"


def test_imports_only_go_down():
  problems = upward_imports(import_graph())
  assert not problems, "\n".join(problems)


def test_no_import_cycles():
  found = cycles(import_graph())
  assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_only_the_cli_parses_arguments_or_prints_errors():
  offenders = []
  for m, p in modules().items():
    if layer_of(m) == "cli":
      continue
    src = p.read_text()
    tree = ast.parse(src)
    for node in ast.walk(tree):
      if isinstance(node, (ast.Import, ast.ImportFrom)):
        names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
        if "argparse" in names:
          offenders.append(f"{m}:{node.lineno}: imports argparse")
      if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print" and node.args
          and isinstance(node.args[0], ast.JoinedStr | ast.Constant)
          and ast.unparse(node.args[0]).lstrip("f'\"").startswith("error")):
        offenders.append(f"{m}:{node.lineno}: prints an error (raise a UserError; the CLI prints it)")
  assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("graph,expected", [
    ({"pplx_jax.core.a": {"pplx_jax.models.b"}, "pplx_jax.models.b": set()}, "imports must go down"),
    ({"pplx_jax.eval.a": {"pplx_jax.stages.b"}, "pplx_jax.stages.b": set()}, "imports must go down"),
    ({"pplx_jax.data.a": {"pplx_jax.objectives.b"}, "pplx_jax.objectives.b": set()}, "imports must go down"),
    ({"pplx_jax.core.a": {"pplx_jax.b"}, "pplx_jax.b": set()}, "is not a layer"),
    ({"pplx_jax.core.a": {"pplx_jax"}, "pplx_jax": set()}, "package root holds no code"),
])
def test_the_checker_catches_upward_imports(graph, expected):
  assert any(expected in p for p in upward_imports(graph))


def test_the_checker_catches_cycles():
  graph = {"pplx_jax.core.a": {"pplx_jax.core.b"}, "pplx_jax.core.b": {"pplx_jax.core.c"},
           "pplx_jax.core.c": {"pplx_jax.core.a"}, "pplx_jax.core.d": {"pplx_jax.core.a"}}
  assert cycles(graph) == [["pplx_jax.core.a", "pplx_jax.core.b", "pplx_jax.core.c"]]
  assert upward_imports({"pplx_jax.stages.a": {"pplx_jax.core.b"}, "pplx_jax.core.b": set()}) == []
