"""The one way inference code gets a model: any model path -> model, config, tokenizer and a mesh over the local
devices (batch-parallel: every device holds the whole model and a slice of the rows).

`pplx-jax embed`, `embed --contextual`, `eval`, the mteb adapter and the pipeline's evaluation all load through
`load`, so they see the same weights, dtype and tokenizer; `check_token_ids` is the shared guard against texts whose
ids the model's embedding table does not have (a tokenizer/model mismatch).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax

from pplx_jax.convert import load as load_lib
from pplx_jax.core import sharding as shd
from pplx_jax.core.checkpoint import CheckpointError
from pplx_jax.core.errors import UserError
from pplx_jax.core.model_config import ATTENTION_KINDS, ModelConfig
from pplx_jax.core.tokenizers import Tokenizer, load_tokenizer


@dataclasses.dataclass
class Loaded:
  model: Any
  config: ModelConfig
  tokenizer: Tokenizer
  mesh: jax.sharding.Mesh
  rules: tuple

  def __iter__(self):  # (model, config, tokenizer, mesh, rules) = load(...)
    return iter((self.model, self.config, self.tokenizer, self.mesh, self.rules))


def load(model_path: str, compute_dtype: str = "float32", attention: str | None = None) -> Loaded:
  """The model at `model_path` (anything `core.checkpoint.resolve` accepts) for inference: no remat, the given
  compute dtype, parameters replicated over a data-parallel mesh of the local devices.

  `attention` ("causal" / "bidirectional") overrides the checkpoint's: the same weights used as a decoder or as an
  encoder (the zero-shot rows of the pipeline report: a pretrained decoder before any adaptation)."""
  if attention is not None and attention not in ATTENTION_KINDS:
    raise UserError(f"attention={attention!r} is not one of {ATTENTION_KINDS}")
  mesh = shd.make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, jax.local_devices())
  rules = shd.DEFAULT_RULES
  overrides = {"attention": attention} if attention is not None else {}
  model, cfg, tok_dir = load_lib.load_model(model_path, mesh=mesh, rules=rules, compute_dtype=compute_dtype,
                                            remat="none", **overrides)
  if tok_dir is None:
    raise CheckpointError(f"{model_path}: no tokenizer files found beside the model")
  return Loaded(model, cfg, load_tokenizer(tok_dir), mesh, rules)


def check_token_ids(ids: Sequence[Sequence[int]], vocab_size: int, what: str = "text") -> None:
  """Fail naming the first row whose token ids exceed the model's vocabulary."""
  for i, t in enumerate(ids):
    if t and max(t) >= vocab_size:
      raise UserError(f"{what} {i} has token id {max(t)} >= model vocab_size {vocab_size}")
