"""The pipeline's plan: which stages run in what order from what, where each step writes, and the records that make
a rerun skip finished steps (`<step>/pipeline_done.json`: the inputs a step was made from, by digest).

The plan is validated before anything trains: every stage config is loaded with the pipeline's overrides, the
stage graph is checked (a stage may only start from an earlier one), and pod pipelines list every `REQUIRED` value
still unset in one error.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import ml_collections

from pplx_jax.core import config as config_lib
from pplx_jax.core import paths
from pplx_jax.core.config import ConfigError

REPO = Path(__file__).resolve().parents[2]  # the checkout: configs/ beside pplx_jax/
DONE = "pipeline_done.json"
PER_QUERY = "ndcg@10"  # the per-query metric kept for paired bootstraps (the report's intervals of differences)


def log(msg: str) -> None:
  print(f"[pipeline] {msg}", flush=True)


def digest(obj: Any) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_json(path: Path, obj: Any) -> None:
  paths.write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any:
  return json.loads(path.read_text())


def tokenizer_corpus(tok_cfg) -> tuple[str, ...]:
  """The local corpora `tokenizer.corpus` names ("wordnet+apt+pydoc"), checked: training corpora only, each once."""
  from pplx_jax.data.sources import local
  spec = str(tok_cfg.get("corpus", "wordnet"))
  names = tuple(spec.split("+"))
  held_out = [n for n in names if n in local.EVAL_ONLY]
  if held_out:
    raise ConfigError(f"tokenizer.corpus={spec!r} names {held_out}, which is held out for evaluation and never "
                      f"trained on; use corpora from {list(local.TRAIN_SOURCES)} joined by '+'")
  bad = [n for n in names if n not in local.TRAIN_SOURCES]
  if bad or len(set(names)) != len(names):
    raise ConfigError(f"tokenizer.corpus={spec!r}: " + (f"unknown corpus {bad}" if bad else "a corpus named twice")
                      + f"; expected distinct names from {list(local.TRAIN_SOURCES)} joined by '+'")
  return names


# ---------------------------------------------------------------------------------------------
# Plan: every stage's resolved config, checked before anything runs.


class Plan:
  """The pipeline config resolved against a workdir: stage configs loaded, overridden and validated."""

  def __init__(self, cfg: ml_collections.ConfigDict, workdir: Path):
    workdir = paths.as_path(workdir)
    self.cfg, self.work = cfg, workdir
    # local or gs:// (core.paths): a pod pipeline keeps its workdir, data and tokenizer in a bucket
    self.data_dir = paths.as_path(cfg.data_dir) if cfg.data_dir else workdir / "data"
    self.tokenizer = paths.as_path(cfg.tokenizer.path) if cfg.tokenizer.path else workdir / "tokenizer"
    if cfg.tokenizer.path and cfg.tokenizer.get("from_model", ""):
      raise ConfigError("set tokenizer.path or tokenizer.from_model, not both")
    self.tokenizer_corpus = tokenizer_corpus(cfg.tokenizer)
    zero_shot = cfg.get("zero_shot", None)
    for spec in (zero_shot.rows if zero_shot is not None else ()):
      attention, _, pooling = str(spec).partition("+")
      if attention not in ("causal", "bidirectional") or pooling not in ("mean", "last"):
        raise ConfigError(f"zero_shot.rows has {spec!r}; each row is 'causal|bidirectional' + '+' + 'mean|last'")
    if zero_shot is not None and zero_shot.rows and not str(zero_shot.model):
      raise ConfigError("zero_shot.rows are set but zero_shot.model (the start model to evaluate) is empty")
    self.order = [str(s) for s in cfg.order]
    unknown = [s for s in self.order if s not in cfg.stages]
    if unknown:
      raise ConfigError(f"pipeline order names {unknown}, which are not in config.stages ({sorted(cfg.stages)})")
    if len(set(self.order)) != len(self.order):
      raise ConfigError(f"pipeline order lists a stage twice: {self.order}")
    self.stage_cfgs: dict[str, ml_collections.ConfigDict] = {}
    for i, name in enumerate(self.order):
      st = cfg.stages[name]
      parent = str(st.init_from)
      if parent and parent in cfg.stages and parent not in self.order[:i]:
        raise ConfigError(f"stage {name!r} starts from {parent!r}, which does not come before it in "
                          f"config.order {self.order}")
      init = str(workdir / parent) if parent in cfg.stages else parent
      overrides = [f"--config.data.dir={self.data_dir}", f"--config.data.tokenizer={self.tokenizer}",
                   f"--config.train.init_from={init}"] + list(st.overrides)
      try:  # relative to the repository; load_config splits a `path:arg` suffix itself
        stage_cfg = config_lib.load_config(REPO / str(st.config), overrides)
      except ConfigError as e:
        raise ConfigError(f"pipeline stage {name!r} ({st.config}): {e}") from None
      self.stage_cfgs[name] = stage_cfg
    m = cfg.merge
    for key in ("a", "b"):
      if str(m[key]) not in self.order:
        raise ConfigError(f"merge.{key}={m[key]!r} is not a stage of config.order {self.order}")
    if not 0.0 <= float(m.t) <= 1.0:
      raise ConfigError(f"merge.t must be in [0, 1], got {m.t}")
    self.models = [str(x) for x in cfg.eval.models]
    known = set(self.order) | {str(m.name)}
    bad = [x for x in self.models if x not in known]
    if bad:
      raise ConfigError(f"eval.models names {bad}; known models: {sorted(known)}")
    if str(cfg.export.model) not in known:
      raise ConfigError(f"export.model={cfg.export.model!r}; known models: {sorted(known)}")
    if str(cfg.ablation.stage) and (str(cfg.ablation.stage) not in self.order or
                                    str(cfg.ablation.reference) not in self.order):
      raise ConfigError(f"ablation.stage={cfg.ablation.stage!r} and ablation.reference={cfg.ablation.reference!r} "
                        f"must both be stages of config.order {self.order}")

  def validate(self, num_devices: int) -> None:
    from pplx_jax.stages import trainer
    missing = placeholders(self.cfg.to_dict(), "config.")
    for name, c in self.stage_cfgs.items():
      missing += placeholders(c.to_dict(), f"stage {name!r}: config.")
    if missing:
      raise ConfigError("values to set before this pipeline can run:\n  " + "\n  ".join(missing))
    for name, c in self.stage_cfgs.items():
      try:
        trainer.validate(c, num_devices)
      except ValueError as e:  # ConfigError, and the mesh-layout checks
        raise ConfigError(f"pipeline stage {name!r} ({self.cfg.stages[name].config}): {e}") from None

  def model_dir(self, name: str) -> Path:
    return self.work / name

  def pooling(self, name: str) -> str:
    c = self.stage_cfgs.get(name)
    return str(c.objective.get("pooling", "mean")) if c is not None and "objective" in c else "mean"


def placeholders(tree: Any, prefix: str) -> list[str]:
  """`key = REQUIRED: ...` values the paper-scale configs leave for the user (data paths, weights)."""
  if isinstance(tree, dict):
    return [m for k, v in tree.items() for m in placeholders(v, f"{prefix}{k}.")]
  if isinstance(tree, (list, tuple)):
    return [m for i, v in enumerate(tree) for m in placeholders(v, f"{prefix}{i}.")]
  return [f"{prefix[:-1]} = {tree!r}"] if isinstance(tree, str) and tree.startswith("REQUIRED") else []


def is_main() -> bool:
  import jax
  return jax.process_index() == 0


def check_done(path: Path, inputs: dict, what: str) -> bool:
  """True when `path/DONE` records exactly `inputs`; an error when it records something else."""
  marker = path / DONE
  if not marker.is_file():
    return False
  recorded = read_json(marker).get("inputs")
  if recorded != json.loads(json.dumps(inputs, sort_keys=True, default=str)):
    raise ConfigError(f"{what} in {path} was finished from different inputs than this config gives "
                      f"(recorded {marker}); delete {path} to redo it (and the steps after it)")
  return True


def mark_done(path: Path, inputs: dict, **info) -> None:
  write_json(path / DONE, {"inputs": inputs, "finished": time.strftime("%Y-%m-%d %H:%M:%S"), **info})
