"""pplx-jax checkpoints on disk: the workdir layout, what a model path points at, orbax save.

A run's workdir (the same layout for a training run and for a converted Hugging Face model):

    WORKDIR/config.json              the run config (ml_collections, JSON)
    WORKDIR/tokenizer/               tokenizer files (tokenizer.json or tokenizer.model + tokenizer_config.json)
    WORKDIR/checkpoints/<step>/      an orbax CheckpointManager step; items:
        params/                      the model parameters (nested dict, HF-like names, stacked layers)
        model/                       the model config (JSON)
        ...                          training adds opt_state/, data_iter/, train/ (see pplx_jax.stages.trainer)

Orbax writes a step to a temporary directory and renames it when complete, so `latest_step()` never returns a
half-written step. Every file of a step then gets a CRC32C (`core.checksums`, `STEP/checksums.process_<i>.json`),
checked before any restore: a corrupted step is refused naming the file, and training moves it to
`WORKDIR/corrupted/<step>` and resumes from the newest good one (`newest_good_step`). Restoring parameters into a model is `pplx_jax.convert.load` (it needs the model definition).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from pplx_jax.core import checksums, paths
from pplx_jax.core.checksums import CorruptCheckpointError  # noqa: F401  (part of this module's API)
from pplx_jax.core.errors import UserError
from pplx_jax.core.model_config import ModelConfig

CHECKPOINTS = "checkpoints"
CORRUPTED = "corrupted"
TOKENIZER = "tokenizer"


class CheckpointError(UserError):
  pass


def manager(workdir: str | os.PathLike, max_to_keep: int | None = None, async_save: bool = False,
            create: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
                                         create=create)
  return ocp.CheckpointManager(paths.absolute(workdir) / CHECKPOINTS, options=options)


def is_step_dir(path: Path) -> bool:
  return (path / "params").is_dir() and (path / "model").is_dir()


def is_workdir(path: Path) -> bool:
  return (path / CHECKPOINTS).is_dir()


def is_hf_folder(path: Path) -> bool:
  return (path / "config.json").is_file() and ((path / "model.safetensors").is_file()
                                                or (path / "model.safetensors.index.json").is_file())


@dataclasses.dataclass
class ModelSource:
  """Where a model lives: a Hugging Face / sentence-transformers folder, a pplx-jax checkpoint step, or a GGUF file
  (read through `pplx_jax.convert.load.resolve_model`, which turns it into a Hugging Face folder)."""
  kind: str  # "hf", "pplx" or "gguf"
  path: Path  # the HF folder, the step directory or the .gguf file
  tokenizer_dir: Path | None


def resolve(path: str | os.PathLike) -> ModelSource:
  """Accepts a Hugging Face / sentence-transformers folder, a checkpoint step directory, a run's workdir (its newest
  complete checkpoint), or a GGUF file."""
  p = paths.as_path(path)
  if not p.exists():
    raise CheckpointError(f"{p}: no such file or directory")
  if p.is_file() and p.suffix.lower() == ".gguf":
    return ModelSource("gguf", p, None)
  if is_hf_folder(p):
    return ModelSource("hf", p, p if has_tokenizer(p) else None)
  if is_step_dir(p):
    checksums.verify(p)
    workdir = p.parent.parent
    tok = workdir / TOKENIZER
    return ModelSource("pplx", p, tok if has_tokenizer(tok) else None)
  if is_workdir(p):
    step = manager(p, create=False).latest_step()
    if step is None:
      raise CheckpointError(f"{p}: workdir has no complete checkpoint under {p / CHECKPOINTS}")
    checksums.verify(p / CHECKPOINTS / str(step))
    tok = p / TOKENIZER
    return ModelSource("pplx", p / CHECKPOINTS / str(step), tok if has_tokenizer(tok) else None)
  raise CheckpointError(f"{p}: not a Hugging Face model folder (config.json + model.safetensors), a pplx-jax "
                        f"checkpoint step (params/ + model/), a pplx-jax workdir (checkpoints/) or a .gguf file")


def has_tokenizer(d: Path) -> bool:
  return d.is_dir() and ((d / "tokenizer.json").is_file() or (d / "tokenizer.model").is_file())


def read_model_config(step_dir: str | os.PathLike) -> tuple[ModelConfig, dict[str, Any]]:
  """The model config and the extra metadata saved beside it (e.g. the dtype of imported weights)."""
  path = paths.as_path(step_dir) / "model" / "metadata"
  if not path.is_file():
    raise CheckpointError(f"{step_dir}: missing model config item ({path})")
  meta = json.loads(path.read_text())
  return ModelConfig.from_dict(meta["config"]), meta.get("extra", {})


def save(workdir: str | os.PathLike, step: int, params: dict[str, Any], model_cfg: ModelConfig,
         extra: dict[str, Any] | None = None, mngr: ocp.CheckpointManager | None = None,
         items: dict[str, Any] | None = None) -> Path:
  """Save one step (params + model config + any extra orbax items) and wait for it to be committed."""
  own = mngr is None
  mngr = mngr or manager(workdir)
  args = {"params": ocp.args.StandardSave(params),
          "model": ocp.args.JsonSave({"config": model_cfg.to_dict(), "extra": extra or {}})}
  args.update(items or {})
  mngr.save(step, args=ocp.args.Composite(**args))
  if own:
    mngr.wait_until_finished()
    mngr.close()
    write_checksums(workdir, step)
  return step_dir(workdir, step)


def step_dir(workdir: str | os.PathLike, step: int) -> Path:
  return paths.as_path(workdir) / CHECKPOINTS / str(step)


def write_checksums(workdir: str | os.PathLike, step: int) -> None:
  """This process's checksums of a committed step (call on every process, after the save has finished)."""
  checksums.write(step_dir(workdir, step), jax.process_index(), jax.process_count())


def newest_good_step(workdir: str | os.PathLike, steps, log=print) -> int | None:
  """The newest of `steps` whose files match their checksums. Newer corrupted steps are moved (by process 0, after
  every process has checked them) to WORKDIR/corrupted/<step>, so orbax never sees them again."""
  from jax.experimental import multihost_utils

  for step in sorted(steps, reverse=True):
    d = step_dir(workdir, step)
    try:
      if not checksums.verify(d):
        log(f"[train] checkpoint {d} has no checksums (saved by an older version, or killed before they were "
            f"written): resuming from it unverified")
      return step
    except CorruptCheckpointError as e:
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"pplx_checksums_{step}")
      dst = paths.as_path(workdir) / CORRUPTED / str(step)
      if jax.process_index() == 0:
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists():
          paths.rmtree(dst)
        paths.move(d, dst)
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"pplx_quarantine_{step}")
      log(f"[train] {e}; moved checkpoint step {step} to {dst} and looking at older steps")
  return None


def copy_tokenizer(src: str | os.PathLike, dst: str | os.PathLike) -> None:
  """Copy the tokenizer files of a folder (only those: model weights stay behind)."""
  src, dst = paths.as_path(src), paths.as_path(dst)
  dst.mkdir(parents=True, exist_ok=True)
  names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json", "vocab.json",
           "merges.txt", "added_tokens.json", "chat_template.jinja")
  for n in names:
    if (src / n).is_file():
      paths.copy_tree(src / n, dst / n)


def params_to_numpy(params: dict[str, Any]) -> dict[str, Any]:
  return jax.tree.map(lambda a: np.asarray(jax.device_get(a)), params)
