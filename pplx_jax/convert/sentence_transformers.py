"""The sentence-transformers folder layout for a mean-pooled encoder (what pplx-embed ships, §1.3 of the notes):
Transformer (the exported Hugging Face model at the folder root) -> mean Pooling. No Dense and no Normalize, so
`SentenceTransformer(dir).encode(texts)` returns the raw mean — what `pplx-jax embed --dtype float32` returns.
"""

from __future__ import annotations

import json
from pathlib import Path


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
  pooling = {
      "word_embedding_dimension": hidden_size,
      "pooling_mode_cls_token": False,
      "pooling_mode_mean_tokens": True,
      "pooling_mode_max_tokens": False,
      "pooling_mode_mean_sqrt_len_tokens": False,
      "pooling_mode_weightedmean_tokens": False,
      "pooling_mode_lasttoken": False,
      "include_prompt": True,
  }
  (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
  (folder / "config_sentence_transformers.json").write_text(json.dumps(
      {"model_type": "SentenceTransformer", "prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"},
      indent=2))
  return ["modules.json", "sentence_bert_config.json", "1_Pooling/config.json", "config_sentence_transformers.json"]
