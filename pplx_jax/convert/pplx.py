"""`pplx-jax convert SRC DST --to pplx`: a folder laid out as the released pplx-embed models.

The released perplexity-ai/pplx-embed-v1-{0.6b,4b} (and pplx-embed-context-v1-*) ship, and this export writes:

    config.json                 model_type bidirectional_pplx_qwen3, architectures [PPLXQwen3Model], auto_map to
                                configuration.PPLXQwen3Config / modeling.PPLXQwen3Model (the contextual models:
                                modeling.PPLXQwen3ContextualModel), use_bidirectional_attention true, use_cache false
    configuration.py            PPLXQwen3Config(Qwen3Config)             remote code (trust_remote_code=True):
    modeling.py                 PPLXQwen3Model(Qwen3Model), non-causal   the templates in pplx_files/, pplx-jax's
    st_quantize.py              FlexibleQuantizer (int8/binary/ubinary)  own code to the release's interface
    model.safetensors           Qwen3Model tensor names (no "model." prefix, no lm_head when tied)
    modules.json                Transformer -> 1_Pooling (mean) -> st_quantize.FlexibleQuantizer, kwargs [quantization]
    1_Pooling/config.json       mean tokens
    tokenizer files, README.md
    onnx/model.onnx             with onnx=True (`--with-onnx`): the graph of `--to onnx`

No sentence_bert_config.json, no config_sentence_transformers.json (no prompts), no Dense, no Normalize. (The
contextual release's own file list is not in the sources we have; its variant gets the same files, with auto_map
to PPLXQwen3ContextualModel, whose modeling.py also uses st_quantize.py.)

What `SentenceTransformer(DST, trust_remote_code=True).encode(texts, ...)` returns for N texts of D dimensions,
and the equal `pplx-jax embed` output. The keyword reaches FlexibleQuantizer because modules.json lists it under
"kwargs" (sentence-transformers routes encode's extra keywords to the modules that declare them); it is not a
model_kwargs / config option, and `encode(precision=...)` is something else (it re-quantises the output and
refuses int8/uint8 input):

  encode(texts)  or  quantization="int8"
      float32 [N, D] holding round(127 tanh x), integers in [-127, 127] up to a ~1e-5 residue of the
      straight-through estimator: take np.rint(e).astype(np.int8)        = embed --dtype int8     (int8 [N, D])
  quantization="binary"
      float32 [N, D], +1 where x >= 0 else -1                            = embed --dtype sign     (int8 [N, D])
  quantization="ubinary"
      uint8 [N, ceil(D/8)], the bits x >= 0 packed MSB first             = embed --dtype ubinary  (= --dtype binary)
  float32: no keyword; drop the quantizer, SentenceTransformer(modules=[m[0], m[1]]).encode(texts) on the loaded
      model m (works on the release too)                                 = embed --dtype float32

So pplx-jax's `binary` (np.packbits(x >= 0)) is the release's `ubinary` bit for bit, `ubinary` is accepted as its
second name, and the release's `binary` (+-1 per dimension) is `--dtype sign`. The contextual variant's
`AutoModel.from_pretrained(DST, trust_remote_code=True).encode(documents, quantization=...)` returns the same codes
per chunk (= `embed --contextual`, for documents that fit in one pass).

Round trip. A release folder converts to a pplx-jax checkpoint with `--to jax` like any Hugging Face folder; the
source config.json travels in the checkpoint's metadata (`SOURCE_CONFIG`), and `--to pplx` from that checkpoint
writes it back verbatim when the architecture, dtype and variant are unchanged, so release -> jax -> release
reproduces every tensor and config.json byte for byte. Other sources get a config generated from the model config.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from pplx_jax.convert import hf
from pplx_jax.convert.sentence_transformers import pooling_config

PPLX_MODEL_TYPE = "bidirectional_pplx_qwen3"
ARCHITECTURE = "PPLXQwen3Model"
AUTO_CONFIG = "configuration.PPLXQwen3Config"
AUTO_MODEL = {"dense": "modeling.PPLXQwen3Model", "contextual": "modeling.PPLXQwen3ContextualModel"}
VARIANTS = tuple(AUTO_MODEL)
TEMPLATES = Path(__file__).with_name("pplx_files")
REMOTE_CODE = ("configuration.py", "modeling.py", "st_quantize.py")
SOURCE_CONFIG = "hf_config_json"  # checkpoint metadata key: the text of an imported folder's config.json
QUANTIZER_MODULE = {"idx": 2, "name": "2", "path": "", "type": "st_quantize.FlexibleQuantizer",
                    "kwargs": ["quantization"]}
# The model fields a config.json must agree on with the checkpoint before it is reused verbatim.
_ARCH_FIELDS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "mlp_dim",
                "rope_theta", "rms_norm_eps", "tie_embeddings", "max_position_embeddings")


def config_text(config: Mapping[str, Any]) -> str:
  """JSON as transformers' save_pretrained writes it (2-space indent, sorted keys, final newline)."""
  return json.dumps(config, indent=2, sort_keys=True) + "\n"


def variant_of(config: Mapping[str, Any]) -> str | None:
  """"dense" / "contextual" for a release config (by its auto_map), None for anything else."""
  if config.get("model_type") != PPLX_MODEL_TYPE:
    return None
  auto_model = (config.get("auto_map") or {}).get("AutoModel")
  for variant, target in AUTO_MODEL.items():
    if auto_model == target or (isinstance(auto_model, str) and auto_model.endswith(target)):
      return variant
  return None


def release_config(cfg, dtype: str, eos_token_id: int, variant: str = "dense") -> dict[str, Any]:
  """A release-style config.json for a model config. Carries every field TEI's Pplx1 loader requires (see
  tests/test_serve.py for the list and where TEI reads each)."""
  out = hf.hf_config_from_model_config(cfg, dtype)
  out.pop("is_causal")  # the release says use_bidirectional_attention; modeling.py makes the layers non-causal
  out.update(
      architectures=[ARCHITECTURE], model_type=PPLX_MODEL_TYPE,
      auto_map={"AutoConfig": AUTO_CONFIG, "AutoModel": AUTO_MODEL[variant]},
      use_bidirectional_attention=True, use_cache=False, use_sliding_window=False, sliding_window=None,
      eos_token_id=int(eos_token_id),
  )
  return out


def _same_architecture(config: Mapping[str, Any], cfg) -> bool:
  try:
    theirs = hf.model_config_from_hf(config)
  except hf.ConversionError:
    return False
  return all(getattr(theirs, f) == getattr(cfg, f) for f in _ARCH_FIELDS)


def export_config(cfg, extra: Mapping[str, Any], dtype: str, variant: str | None, eos_token_id: int
                  ) -> tuple[str, str]:
  """(config.json text, variant) for an export: the source's own config.json when it was a release folder of the
  same architecture (verbatim unless the dtype or variant changes), else a generated one."""
  text = extra.get(SOURCE_CONFIG)
  source = json.loads(text) if text else {}
  source_variant = variant_of(source)
  if source_variant is None or not _same_architecture(source, cfg):
    variant = variant or "dense"
    return config_text(release_config(cfg, dtype, eos_token_id, variant)), variant
  variant = variant or source_variant
  dtype_key = "torch_dtype" if "torch_dtype" in source and "dtype" not in source else "dtype"
  if variant == source_variant and source.get(dtype_key, dtype) == dtype:
    return text, variant
  source = dict(source, **{dtype_key: dtype})
  source["auto_map"] = dict(source.get("auto_map") or {}, AutoModel=AUTO_MODEL[variant])
  return config_text(source), variant


def modules_config() -> list[dict[str, Any]]:
  return [
      {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
      {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
      dict(QUANTIZER_MODULE),
  ]


_README = """# {name}

Exported by `pplx-jax convert --to pplx` in the layout of the released pplx-embed models ({kind}).
Mean pooling, no prompts; the default output is unnormalised int8 (compare by cosine similarity).

```python
from sentence_transformers import SentenceTransformer
model = SentenceTransformer("{name}", trust_remote_code=True)
int8 = model.encode(texts)                          # round(127 tanh(mean)), float32 values
signs = model.encode(texts, quantization="binary")  # +1 / -1
bits = model.encode(texts, quantization="ubinary")  # packed sign bits, uint8
```
"""

_README_CONTEXTUAL = """
Late chunking (one pass per document, one embedding per chunk):

```python
from transformers import AutoModel
model = AutoModel.from_pretrained("{name}", trust_remote_code=True)
per_document = model.encode([["chunk 1", "chunk 2"], ["another document"]])  # int8 codes per chunk
```
"""


def write_release_files(folder: str | os.PathLike, hidden_size: int, variant: str = "dense") -> list[str]:
  """Everything but the weights, config.json and the tokenizer: remote code, the sentence-transformers modules and
  a README."""
  folder = Path(folder)
  for name in REMOTE_CODE:
    shutil.copyfile(TEMPLATES / name, folder / name)
  (folder / "modules.json").write_text(json.dumps(modules_config(), indent=2))
  (folder / "1_Pooling").mkdir(exist_ok=True)
  (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config(hidden_size), indent=4))
  readme = _README.format(name=folder.name, kind="pplx-embed-context-v1" if variant == "contextual" else
                          "pplx-embed-v1")
  if variant == "contextual":
    readme += _README_CONTEXTUAL.format(name=folder.name)
  (folder / "README.md").write_text(readme)
  return [*REMOTE_CODE, "modules.json", "1_Pooling/config.json", "README.md"]


def eos_token_id(tok_dir: Path) -> int:
  from pplx_jax.core.tokenizers import load_tokenizer
  tok = load_tokenizer(tok_dir)
  return int(tok.eos_id if tok.eos_id is not None else tok.pad_id)


def write_pplx(tmp: Path, params, cfg, tok_dir, extra: Mapping[str, Any], dtype: str | None = None,
               variant: str | None = None, max_shard_bytes: int = hf.DEFAULT_MAX_SHARD_BYTES) -> str:
  """Write the release layout into `tmp` (weights, config, remote code, tokenizer); returns the variant."""
  import ml_dtypes

  if variant is not None and variant not in VARIANTS:
    raise ValueError(f"unknown pplx variant {variant!r}; expected one of {VARIANTS}")
  if tok_dir is None:
    raise FileNotFoundError("the source model has no tokenizer files; an exported model must carry its tokenizer")
  source_dtype = extra.get("source_dtype")
  dtype = dtype or (source_dtype if source_dtype in ("float32", "bfloat16", "float16") else cfg.param_dtype)
  np_dtype = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}[dtype]
  tensors = {k: v.astype(np_dtype, copy=False) for k, v in hf.params_to_hf(params, cfg).items()}
  hf.write_safetensors(tensors, tmp, max_shard_bytes)
  text, variant = export_config(cfg, extra, dtype, variant, eos_token_id(tok_dir))
  (tmp / "config.json").write_text(text)
  from pplx_jax.core import checkpoint as ckpt
  ckpt.copy_tokenizer(tok_dir, tmp)
  write_release_files(tmp, cfg.hidden_size, variant)
  return variant


def to_pplx(src: str | os.PathLike, dst: str | os.PathLike, dtype: str | None = None, variant: str | None = None,
            max_shard_bytes: int = hf.DEFAULT_MAX_SHARD_BYTES, with_onnx: bool = False) -> Path:
  """Any model path -> the release layout. variant: "dense" / "contextual" (default: the source's own when it is a
  release folder or was imported from one, else dense). with_onnx adds onnx/model.onnx (`--to onnx`'s graph)."""
  from pplx_jax.convert.load import source_params
  from pplx_jax.core import paths
  from pplx_jax.core.paths import staged_output

  params, cfg, tok_dir, extra = source_params(src)
  with staged_output(dst) as tmp:
    write_pplx(tmp, params, cfg, tok_dir, extra, dtype, variant, max_shard_bytes)
    if with_onnx:
      from pplx_jax.convert import onnx as onnx_export
      (tmp / "onnx").mkdir()
      onnx_export.export(params, cfg, tmp / "onnx" / onnx_export.MODEL_FILE)
  return paths.as_path(dst)
