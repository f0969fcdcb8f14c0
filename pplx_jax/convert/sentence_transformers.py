"""The sentence-transformers folder layout for a mean-pooled encoder (what pplx-embed ships, §1.3 of the notes):
Transformer (the exported Hugging Face model at the folder root) -> mean Pooling. No Dense and no Normalize, so
`SentenceTransformer(dir).encode(texts)` returns the raw mean — what `pplx-jax embed --dtype float32` returns.

Quantised outputs with these stock modules (no remote code) come from `encode(texts, precision=...)`, which
quantises the float mean x after the pipeline (after `truncate_dim`, as `embed --dim` truncates first):

* ``precision="ubinary"``: np.packbits(x > 0), uint8. pplx-jax's `binary`/`ubinary` (and the release's
  `ubinary`) are np.packbits(x >= 0): the same bytes except in dimensions where x is exactly 0 (or -0.0), whose bit
  sentence-transformers clears and pplx-jax sets. An exact zero needs a pooled dimension that is identically 0
  (e.g. a zero final-norm weight); tests/test_serve.py builds one to show it.
* ``precision="binary"``: the same bits as int8, np.packbits(x > 0) - 128; ``(e.astype(np.int16) + 128)
  .astype(np.uint8)`` gives the ubinary bytes back.
* ``precision="int8"`` / ``"uint8"``: a per-dimension min/max calibration over the encoded batch,
  floor((x - min) / ((max - min) / 255)) (- 128): batch-dependent, not pplx-embed's code.

What stock modules cannot express: pplx-embed's int8, round(127 tanh x) (no module rounds; Dense(Tanh) and a
127-scaled Dense give 127 tanh x unrounded), and the release's `binary`, a +-1 value per dimension (precision
"binary" packs). From the float output: ``np.rint(127 * np.tanh(e)).astype(np.int8)`` and
``np.where(e >= 0, 1, -1)`` (= `embed --dtype int8` / `--dtype sign`). The release layout (`--to pplx`,
FlexibleQuantizer as remote code) returns both from `encode` itself.
"""

from __future__ import annotations

import json
from pathlib import Path


def pooling_config(hidden_size: int) -> dict:
  """sentence-transformers' Pooling module config for the mean of the final hidden states over real tokens."""
  return {
      "word_embedding_dimension": hidden_size,
      "pooling_mode_cls_token": False,
      "pooling_mode_mean_tokens": True,
      "pooling_mode_max_tokens": False,
      "pooling_mode_mean_sqrt_len_tokens": False,
      "pooling_mode_weightedmean_tokens": False,
      "pooling_mode_lasttoken": False,
      "include_prompt": True,
  }


def write_st_files(folder: str | Path, hidden_size: int, max_seq_length: int) -> list[str]:
  folder = Path(folder)
  modules = [
      {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
      {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
  ]
  (folder / "modules.json").write_text(json.dumps(modules, indent=2))
  (folder / "sentence_bert_config.json").write_text(
      json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False}, indent=2))
  (folder / "1_Pooling").mkdir(exist_ok=True)
  (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config(hidden_size), indent=2))
  (folder / "config_sentence_transformers.json").write_text(json.dumps(
      {"model_type": "SentenceTransformer", "prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"},
      indent=2))
  return ["modules.json", "sentence_bert_config.json", "1_Pooling/config.json", "config_sentence_transformers.json"]
