"""`pplx-jax convert SRC DST --to onnx`: one ONNX graph with the outputs of the released pplx-embed export.

The graph (opset `OPSET`, float32 weights, dynamic batch and sequence axes):

    inputs   input_ids        int64 [batch, sequence]
             attention_mask   int64 [batch, sequence]   1 = real token (either padding side)
    outputs  pooler_output         float32 [batch, D]            mean of last_hidden_state over real tokens
             last_hidden_state     float32 [batch, sequence, D]  final-norm output (late chunking pools it)
             pooler_output_int8    int8    [batch, D]            round(127 tanh(pooler_output))
             pooler_output_binary  int8    [batch, D]            +1 where pooler_output >= 0, else -1

The names, order and dtypes are the release's onnx/model.onnx, as its consumers read it (TEI's ORT backend takes
`pooler_output_int8` when config.json says model_type bidirectional_pplx_qwen3; backends/ort/src/lib.rs). The
release's packed `ubinary` has no output: it is np.packbits(pooler_output_binary > 0), = `embed --dtype binary`.

The folder is servable as it is: model.onnx, config.json (the `--to pplx` config: TEI reads model_type,
hidden_size, num_hidden_layers, max_position_embeddings from it), 1_Pooling/config.json (mean, for TEI's router)
and the tokenizer files, with tokenizer_config.json given a `model_max_length` (`--max-seq-length`) where it has
none (fastembed requires one). The weights are inline: model.onnx is self-contained up to protobuf's 2 GiB limit;
a larger model writes all of them to ONE external file, model.onnx_data, beside it (the release splits its 2.4 GB
into model.onnx_data and model.onnx_data_1, which fastembed cannot load).

Exporter: torch.onnx.export(dynamo=True) (torch.export + onnxscript), which works offline with torch 2.13 and
onnxscript 0.7; the TorchScript exporter (dynamo=False) also works but is deprecated. The traced module is
transformers' Qwen3Model (eager attention) given a prepared additive padding mask, so the graph has no causal
mask and no mask-building code; pooling and quantisation are plain torch ops after it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from pplx_jax.convert import hf

OPSET = 18
MODEL_FILE = "model.onnx"
EXTERNAL_DATA = "model.onnx_data"
MAX_INLINE_BYTES = 2 * 1024**3  # protobuf's limit on one serialized message
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAMES = ("pooler_output", "last_hidden_state", "pooler_output_int8", "pooler_output_binary")


def torch_encoder(params: Mapping[str, Any], cfg):
  """transformers' Qwen3Model holding `params` in float32, eval mode, every layer non-causal."""
  import torch
  from transformers import Qwen3Config, Qwen3Model

  config = Qwen3Config(**hf.hf_config_from_model_config(cfg, "float32"))
  model = Qwen3Model._from_config(config, attn_implementation="eager")
  tensors = hf.params_to_hf(params, cfg)
  tensors.pop("lm_head.weight", None)  # untied models: an encoder has no LM head
  state = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in tensors.items()}  # a writable copy
  missing, unexpected = model.load_state_dict(state, strict=False)
  missing = [m for m in missing if not m.endswith("rotary_emb.inv_freq")]
  if missing or unexpected:
    raise hf.ConversionError(f"ONNX export: tensors missing {missing[:5]}, unexpected {unexpected[:5]}")
  for layer in model.layers:
    layer.self_attn.is_causal = False
  return model.eval()


def pooled_module(encoder):
  """(input_ids, attention_mask) -> the four outputs of OUTPUT_NAMES."""
  import torch

  class PooledEncoder(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.encoder = encoder

    def forward(self, input_ids, attention_mask):
      mask = attention_mask.to(torch.float32)
      bias = (1.0 - mask)[:, None, None, :] * torch.finfo(torch.float32).min
      layer_types = getattr(self.encoder.config, "layer_types", None) or ["full_attention"]
      hidden = self.encoder(input_ids=input_ids, attention_mask={t: bias for t in set(layer_types)}).last_hidden_state
      weights = mask[..., None]
      pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
      int8 = torch.clamp(torch.round(torch.tanh(pooled) * 127.0), -128.0, 127.0).to(torch.int8)
      binary = torch.where(pooled >= 0, 1.0, -1.0).to(torch.int8)
      return pooled, hidden, int8, binary

  return PooledEncoder().eval()


def trace(params: Mapping[str, Any], cfg):
  """The ONNX graph (an onnx_ir.Model) of the pooled encoder holding `params`."""
  import warnings

  import torch

  module = pooled_module(torch_encoder(params, cfg))
  ids = torch.ones((2, 5), dtype=torch.long)
  mask = torch.ones((2, 5), dtype=torch.long)
  axes = {0: "batch", 1: "sequence"}
  with warnings.catch_warnings(), torch.no_grad():
    warnings.simplefilter("ignore")
    program = torch.onnx.export(module, (ids, mask), input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                                dynamic_shapes={"input_ids": axes, "attention_mask": axes}, opset_version=OPSET,
                                dynamo=True, verbose=False)
  model = program.model
  got = [v.name for v in model.graph.outputs]
  if got != list(OUTPUT_NAMES):
    raise RuntimeError(f"ONNX export: outputs {got}, expected {list(OUTPUT_NAMES)}")
  # The exporter annotates every node with its Python stack trace and FX node (most of the file for a small
  # model, and local paths): drop them.
  from onnx_ir.traversal import RecursiveGraphIterator
  for node in RecursiveGraphIterator(model.graph):
    node.metadata_props.clear()
  return model


def save_graph(model, path: str | os.PathLike, max_inline_bytes: int = MAX_INLINE_BYTES) -> list[str]:
  """Write an onnx_ir.Model to `path`: weights inline, or all in one `model.onnx_data` beside it when they exceed
  max_inline_bytes. Returns the file names written."""
  import onnx_ir

  path = Path(path)
  size = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
  if size <= max_inline_bytes:
    onnx_ir.save(model, path)
    return [path.name]
  # Small constants (shape operands) stay inline: onnxruntime reads them during shape inference.
  onnx_ir.save(model, path, external_data=EXTERNAL_DATA, size_threshold_bytes=1024)
  return [path.name, EXTERNAL_DATA]


def export(params: Mapping[str, Any], cfg, path: str | os.PathLike, max_inline_bytes: int = MAX_INLINE_BYTES
           ) -> list[str]:
  """trace + save_graph."""
  return save_graph(trace(params, cfg), path, max_inline_bytes)
