"""Configs are Python files with `get_config()` returning an ml_collections ConfigDict (big_vision style).

`--config.a.b=value` overrides are applied to the locked dict, so an unknown key fails with the closest known keys,
and a value of the wrong type fails naming the key. `validate()` runs every shape/size check before anything
compiles. The resolved config is saved into each run's workdir.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import ml_collections

from pplx_jax.core import paths
from pplx_jax.core.errors import UserError
from pplx_jax.core.model_config import ModelConfig


class ConfigError(UserError):
  pass


def _repo_root_of(path: Path) -> Path | None:
  for parent in path.resolve().parents:
    if (parent / "configs" / "__init__.py").is_file():
      return parent
  return None


def load_config_file(path: str | os.PathLike, arg: str | None = None) -> ml_collections.ConfigDict:
  """Import a config file by path. `path:arg` passes `arg` to get_config (e.g. a size name)."""
  path_str = str(path)
  if arg is None and ":" in path_str and not Path(path_str).is_file():
    path_str, arg = path_str.rsplit(":", 1)
  p = Path(path_str)
  if not p.is_file():
    raise ConfigError(f"config file {p} does not exist")
  root = _repo_root_of(p)
  if root is not None and str(root) not in sys.path:
    sys.path.insert(0, str(root))  # configs import shared pieces as `configs.model...`
  spec = importlib.util.spec_from_file_location(f"_pplx_config_{abs(hash(str(p.resolve())))}", p)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{p}: no get_config() function")
  cfg = module.get_config(arg) if arg is not None else module.get_config()
  if not isinstance(cfg, ml_collections.ConfigDict):
    raise ConfigError(f"{p}: get_config() returned {type(cfg).__name__}, expected ml_collections.ConfigDict")
  return cfg


def _all_keys(cfg: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  keys = []
  for k, v in cfg.items():
    keys.append(prefix + k)
    if isinstance(v, ml_collections.ConfigDict):
      keys += _all_keys(v, prefix + k + ".")
  return keys


def _parse_value(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    if text.lower() in ("true", "false"):
      return text.lower() == "true"
    if text.lower() in ("none", "null"):
      return None
    return text


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
  """Apply `config.a.b=value` / `--config.a.b=value` strings in order."""
  cfg = ml_collections.ConfigDict(cfg.to_dict(), type_safe=True)
  cfg.lock()
  for raw in overrides:
    item = raw[2:] if raw.startswith("--") else raw
    if not item.startswith("config.") or "=" not in item:
      raise ConfigError(f"override {raw!r} is not of the form --config.key=value")
    key, text = item[len("config."):].split("=", 1)
    parts = key.split(".")
    node = cfg
    for i, part in enumerate(parts):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        close = difflib.get_close_matches(key, _all_keys(cfg), n=3)
        raise ConfigError(f"unknown config key {key!r}" + (f"; did you mean {close}?" if close else ""))
      if i < len(parts) - 1:
        node = node[part]
    old = node[parts[-1]]
    # A string field takes the text as written ("none" stays "none"), unless it is a quoted literal.
    value = _parse_value(text) if not isinstance(old, str) or text[:1] in "'\"" else text
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
      value = float(value)
    if isinstance(old, (list, tuple)) and isinstance(value, (list, tuple)):
      value = type(old)(value)
    try:
      with node.unlocked():
        node[parts[-1]] = value
    except TypeError as e:
      raise ConfigError(f"config key {key!r}: cannot set {value!r} ({type(value).__name__}) on a field of type "
                        f"{type(old).__name__}: {e}") from None
  return cfg


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  return apply_overrides(load_config_file(path), overrides)


def model_config(cfg: ml_collections.ConfigDict) -> ModelConfig:
  if "model" not in cfg:
    raise ConfigError("config has no `model` section")
  try:
    return ModelConfig.from_dict(cfg.model)
  except (TypeError, ValueError) as e:
    raise ConfigError(str(e)) from None


def to_json(cfg: ml_collections.ConfigDict | dict) -> str:
  d = cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else cfg
  return json.dumps(d, indent=2, sort_keys=True, default=str)


def save_config(cfg: ml_collections.ConfigDict, workdir: str | os.PathLike, name: str = "config.json") -> Path:
  path = paths.as_path(workdir) / name
  return paths.write_text_atomic(path, to_json(cfg), tmp_name=path.with_suffix(".tmp").name)


def from_json_file(path: str | os.PathLike) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(json.loads(paths.as_path(path).read_text()))
