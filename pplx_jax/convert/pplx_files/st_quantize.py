"""The storage quantiser of a pplx-embed export: the last module of its sentence-transformers pipeline.

Written by `pplx-jax convert --to pplx` to the interface of the released model's `st_quantize.py` (the same class
names, keyword and arithmetic; the code is pplx-jax's own). modules.json lists the module as
``{"type": "st_quantize.FlexibleQuantizer", "kwargs": ["quantization"]}``, which makes sentence-transformers route
the `quantization` keyword of `encode` to it::

    model = SentenceTransformer(folder, trust_remote_code=True)
    model.encode(texts)                          # int8 (the default)
    model.encode(texts, quantization="binary")   # +-1
    model.encode(texts, quantization="ubinary")  # packed bits

Outputs, for the mean-pooled float embedding x:

* ``int8``: round(127 tanh(x)) clamped to [-128, 127] (so in [-127, 127]); a float32 tensor of integer values.
* ``binary``: +1 where x >= 0, else -1; float32.
* ``ubinary``: the bits (x >= 0) packed eight to a byte, the first dimension in the most significant bit
  (numpy.packbits); uint8, ceil(D / 8) bytes.

int8 and binary are straight-through estimators, (hard + soft) - soft with soft = tanh(x), so the module also trains
(quantisation-aware training). In float32 that sum differs from the integer code by up to a few 1e-6: round before
casting (``numpy.rint(e).astype(numpy.int8)``), never truncate.
"""

from __future__ import annotations

import numpy as np
import torch

try:
  from sentence_transformers.base.modules import Module  # sentence-transformers >= 6
except ImportError:
  try:
    from sentence_transformers.models import Module  # sentence-transformers 5
  except ImportError:  # the contextual model imports this file; it does not need sentence-transformers
    Module = torch.nn.Module

QUANTIZATIONS = ("int8", "binary", "ubinary")


class Quantizer(torch.nn.Module):
  """hard(x) in the forward pass, soft(x)'s gradient in the backward pass (or soft(x) alone when hard=False)."""

  def __init__(self, hard: bool = True):
    super().__init__()
    self._hard = hard

  def _soft_quantize(self, x: torch.Tensor) -> torch.Tensor:
    raise NotImplementedError

  def _hard_quantize(self, x: torch.Tensor) -> torch.Tensor:
    raise NotImplementedError

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    soft = self._soft_quantize(x)
    if not self._hard:
      return soft
    # The order of the sum is part of the contract: it fixes the float32 residue around the integer code.
    return self._hard_quantize(x).detach() + soft - soft.detach()


class Int8TanhQuantizer(Quantizer):
  qmin, qmax = -128, 127

  def _soft_quantize(self, x):
    return torch.tanh(x)

  def _hard_quantize(self, x):
    return torch.clamp(torch.round(torch.tanh(x) * self.qmax), self.qmin, self.qmax)


class BinaryTanhQuantizer(Quantizer):
  def __init__(self, hard: bool = True, scale: float = 1.0):
    super().__init__(hard)
    self._scale = scale

  def _soft_quantize(self, x):
    return torch.tanh(self._scale * x)

  def _hard_quantize(self, x):
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


class PackedBinaryQuantizer:
  """Sign bits (x >= 0) packed most significant bit first; no gradient (uint8 output)."""

  def __call__(self, x: torch.Tensor) -> torch.Tensor:
    packed = np.packbits((x >= 0).cpu().numpy(), axis=-1)
    return torch.from_numpy(packed).to(x.device)


def quantize(x: torch.Tensor, quantization: str = "int8") -> torch.Tensor:
  if quantization == "int8":
    return Int8TanhQuantizer()(x)
  if quantization == "binary":
    return BinaryTanhQuantizer()(x)
  if quantization == "ubinary":
    return PackedBinaryQuantizer()(x)
  raise ValueError(f"Invalid quantization type: {quantization!r}. Must be one of {QUANTIZATIONS}.")


class FlexibleQuantizer(Module):
  """sentence_embedding -> its int8 / binary / ubinary code, chosen per call with the `quantization` keyword."""

  forward_kwargs = {"quantization"}

  def __init__(self):
    super().__init__()

  def forward(self, features: dict, quantization: str = "int8", **kwargs) -> dict:
    features["sentence_embedding"] = quantize(features["sentence_embedding"], quantization)
    return features

  @classmethod
  def load(cls, *args, **kwargs) -> FlexibleQuantizer:
    return cls()  # no parameters and no config

  def save(self, *args, **kwargs) -> None:
    return None
