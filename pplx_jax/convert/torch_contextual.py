"""Late chunking in PyTorch for a model exported with `pplx-jax convert --to hf` (the same computation as
`pplx-jax embed --contextual`, paper §5)::

    from transformers import AutoModel, AutoTokenizer
    from pplx_jax.convert.torch_contextual import contextual_embed
    model = AutoModel.from_pretrained("export/hf").eval()
    tokenizer = AutoTokenizer.from_pretrained("export/hf")
    per_doc = contextual_embed(model, tokenizer, [["chunk 1", "chunk 2"], ["another doc"]])  # [(2, D), (1, D)]

Each chunk is tokenized alone (the tokenizer's default encoding), chunks are joined with the separator
(``<|endoftext|>``, id 151643 in Qwen3 vocabularies), one bidirectional pass runs over the document (or over each
window of `max_length` tokens that `pplx_jax.models.late_chunking.plan_windows` assigns chunks to when the document is
longer), and each chunk's embedding is the float32 mean of ``last_hidden_state`` over its own tokens (separators
excluded). Quantise with `pplx_jax.models.quantize.quantize_np` (int8: round(127 tanh x); binary: sign bits).
The window planning is imported from pplx_jax (NumPy only at call time), so both paths pick identical windows.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from pplx_jax.core.tokenizers import ENDOFTEXT


def default_sep_id(tokenizer) -> int:
  """<|endoftext|>, else the tokenizer's sep, eos or pad token (the order `pplx-jax embed --contextual` uses)."""
  tid = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
  if tid is not None and tid != tokenizer.unk_token_id:
    return int(tid)
  for t in (tokenizer.sep_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id):
    if t is not None:
      return int(t)
  raise ValueError("the tokenizer has no <|endoftext|>, sep, eos or pad token to separate chunks with")


def contextual_embed(model, tokenizer, docs: Sequence[Sequence[str]], sep_id: int | None = None,
                     max_length: int = 512, stride: int | None = None, batch_size: int = 8) -> list[np.ndarray]:
  """Late-chunked embeddings: one float32 [n_chunks, D] array per document of `docs` (lists of chunk strings)."""
  import torch

  from pplx_jax.models.late_chunking import plan_windows

  sep_id = default_sep_id(tokenizer) if sep_id is None else int(sep_id)
  pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else sep_id
  rows = []  # (document, window)
  for i, chunks in enumerate(docs):
    ids = tokenizer(list(chunks))["input_ids"]
    rows.extend((i, w) for w in plan_windows(ids, sep_id, max_length, stride).windows)
  out = [np.zeros((len(d), 0), np.float32) for d in docs]
  device = next(model.parameters()).device
  for s in range(0, len(rows), batch_size):
    part = rows[s:s + batch_size]
    width = max(len(w.ids) for _, w in part)
    ids = torch.full((len(part), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(part), width), dtype=torch.long)
    for r, (_, w) in enumerate(part):
      ids[r, :len(w.ids)] = torch.from_numpy(w.ids.astype(np.int64))
      mask[r, :len(w.ids)] = 1
    with torch.no_grad():
      hidden = model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state.float().cpu()
    for r, (i, w) in enumerate(part):
      if out[i].shape[1] == 0:
        out[i] = np.zeros((len(docs[i]), hidden.shape[-1]), np.float32)
      for k in w.chunks:  # span ids are the global chunk index + 1 on the chunks pooled from this window
        sel = torch.from_numpy(np.flatnonzero(w.span_ids == k + 1))
        out[i][k] = hidden[r, sel].mean(0).numpy()
  return out
