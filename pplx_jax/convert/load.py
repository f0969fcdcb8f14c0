"""Parameters and models from any model path: a Hugging Face / sentence-transformers folder, a pplx-jax checkpoint
step, a run's workdir (its newest complete checkpoint), or a GGUF file.

A GGUF file is read once per process through `convert.gguf` (dequantised, llama.cpp's q/k permutation undone, the
tokenizer rebuilt from its metadata) into a Hugging Face folder in a temporary directory, and from there takes the
same path as any Hugging Face folder: one import, one set of checks.

`source_params` gives host (NumPy) parameters for conversions and merges; `restore_params` restores a checkpoint
straight into the shardings of the current mesh and rules (so a checkpoint written on one mesh restores on another);
`load_model` builds the model from either kind of path. Training (`train.init_from`) and inference
(`pplx_jax.inference.load`) go through `load_model`, so a model is read one way everywhere.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

from pplx_jax.convert import hf
from pplx_jax.core import checkpoint as ckpt
from pplx_jax.core import paths
from pplx_jax.core.checkpoint import CheckpointError, read_model_config, resolve
from pplx_jax.core.model_config import ModelConfig
from pplx_jax.models import encoder

_GGUF_FOLDERS: dict[tuple[str, int, int], Path] = {}


def resolve_model(path: str | os.PathLike) -> ckpt.ModelSource:
  """`core.checkpoint.resolve`, with a GGUF file turned into the Hugging Face folder it holds."""
  src = resolve(path)
  if paths.is_url(src.path) and src.kind in ("hf", "gguf"):
    # safetensors and GGUF readers take local files: a bucket model is read through a local copy (once per process)
    local = paths.cached_local_copy(src.path)
    src = ckpt.ModelSource(src.kind, local, local if src.tokenizer_dir is not None else None)
  if src.kind != "gguf":
    return src
  import atexit
  import shutil
  import tempfile

  from pplx_jax.convert import gguf

  st = src.path.stat()
  key = (str(src.path.resolve()), st.st_size, st.st_mtime_ns)
  if key not in _GGUF_FOLDERS:
    tmp = Path(tempfile.mkdtemp(prefix="pplx-gguf-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    gguf.write_hf_folder(gguf.read_gguf(src.path), tmp / "hf")
    _GGUF_FOLDERS[key] = tmp / "hf"
  folder = _GGUF_FOLDERS[key]
  return ckpt.ModelSource("hf", folder, folder)


def restore_params(step_dir: str | os.PathLike, model_cfg: ModelConfig, mesh=None, rules=None) -> dict[str, Any]:
  """Restore params into the shardings the *current* mesh and rules give (so a checkpoint reshards on restore)."""
  from pplx_jax.core import sharding as shd

  _, abstract_state = nnx.split(encoder.abstract_model(model_cfg))
  pure = nnx.to_pure_dict(abstract_state)
  if mesh is None:
    dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shardings = jax.tree.map(lambda _: dev, pure)
  else:
    shardings = nnx.to_pure_dict(shd.param_shardings(abstract_state, mesh, rules or shd.DEFAULT_RULES))
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), pure, shardings)
  item = paths.absolute(step_dir) / "params"
  try:
    return ocp.StandardCheckpointer().restore(item, target)
  except (ValueError, KeyError) as e:
    raise CheckpointError(f"{item}: parameters do not match the model config: {e}") from None


def load_model(path: str | os.PathLike, mesh=None, rules=None, **config_overrides):
  """(model, model_cfg, tokenizer_dir) from any model path `resolve_model` accepts."""
  src = resolve_model(path)
  if src.kind == "hf":
    cfg = hf.folder_model_config(src.path, **config_overrides)
    tensors, _ = hf.read_safetensors(src.path)
    params = hf.params_from_hf(tensors, cfg, source=str(src.path))
    return encoder.model_from_params(cfg, params, mesh, rules), cfg, src.tokenizer_dir
  cfg, _ = read_model_config(src.path)
  if config_overrides:
    cfg = cfg.replace(**{k: v for k, v in config_overrides.items() if v is not None})
  params = restore_params(src.path, cfg, mesh, rules)
  return encoder.model_from_params(cfg, params, mesh, rules), cfg, src.tokenizer_dir


def source_params(src: str | os.PathLike) -> tuple[dict[str, Any], Any, Path | None, dict[str, Any]]:
  """(numpy params, model config, tokenizer dir, extra metadata) from any model path."""
  source = resolve_model(src)
  if source.kind == "hf":
    cfg = hf.folder_model_config(source.path)
    tensors, dtype = hf.read_safetensors(source.path)
    params = hf.params_from_hf(tensors, cfg, source=str(source.path))
    # The config text travels with the checkpoint so `--to pplx` can write a release config back verbatim.
    return params, cfg, source.tokenizer_dir, {"source": str(source.path), "source_dtype": dtype,
                                               "hf_config_json": (source.path / "config.json").read_text()}
  cfg, extra = ckpt.read_model_config(source.path)
  params = ckpt.params_to_numpy(restore_params(source.path, cfg))
  return params, cfg, source.tokenizer_dir, extra
