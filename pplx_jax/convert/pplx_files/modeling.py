"""The model classes of a pplx-embed export (remote code, loaded with `trust_remote_code=True`).

Written by `pplx-jax convert --to pplx` in the layout of the released pplx-embed models (the code is pplx-jax's
own). config.json's auto_map picks the class:

* `PPLXQwen3Model` (pplx-embed-v1): transformers' `Qwen3Model` with every layer non-causal and a padding-only
  attention mask, so each token attends to every real token of its sequence. `last_hidden_state` is the
  final-norm output; sentence-transformers mean-pools it (1_Pooling) and quantises it (st_quantize.py).
* `PPLXQwen3ContextualModel` (pplx-embed-context-v1): the same encoder plus `encode(documents)` for late chunking.
  Each chunk is tokenized alone, the chunks of a document are joined with one separator token (<|endoftext|>)
  between neighbours, the document runs through the encoder once, and each chunk's embedding is the float32 mean
  of its own tokens' last hidden states (separators excluded), then quantised like the sentence-transformers
  pipeline. This is `pplx-jax embed --contextual` for documents that fit in one pass.
"""

from __future__ import annotations

import torch
from transformers import Qwen3Model

from .configuration import PPLXQwen3Config

ENDOFTEXT = "<|endoftext|>"


def bidirectional_mask(config, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None):
  """The mask for the attention implementation in use: query i sees key j iff token j is real (mask 1)."""
  try:
    from transformers.masking_utils import create_bidirectional_mask
  except ImportError:  # older transformers: an additive float mask, which eager and sdpa attention both take
    if attention_mask is None:
      return None
    keep = attention_mask[:, None, None, :].to(device=inputs_embeds.device, dtype=torch.bool)
    dtype = inputs_embeds.dtype
    return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, torch.finfo(dtype).min)
  return create_bidirectional_mask(config, inputs_embeds, attention_mask)


class PPLXQwen3Model(Qwen3Model):
  config_class = PPLXQwen3Config

  def __init__(self, config):
    super().__init__(config)
    # sdpa and flash attention read the flag when they get no mask (an unpadded batch).
    for layer in self.layers:
      layer.self_attn.is_causal = False

  def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None, **kwargs):
    if inputs_embeds is None:
      inputs_embeds = self.embed_tokens(input_ids)
    if not isinstance(attention_mask, dict):  # a prepared per-layer-type mask mapping passes through
      mask = bidirectional_mask(self.config, inputs_embeds, attention_mask)
      layer_types = getattr(self.config, "layer_types", None) or ["full_attention"]
      attention_mask = {kind: mask for kind in set(layer_types)}
    return super().forward(attention_mask=attention_mask, position_ids=position_ids, inputs_embeds=inputs_embeds,
                           **kwargs)


class PPLXQwen3ContextualModel(PPLXQwen3Model):
  """Late chunking: `encode([[chunk, ...], ...])` -> one (n_chunks, hidden_size) array per document."""

  _tokenizer = None

  @property
  def tokenizer(self):
    if self._tokenizer is None:
      from transformers import AutoTokenizer
      # The model's own code is already trusted; the config it reads to pick the tokenizer class is that code.
      self._tokenizer = AutoTokenizer.from_pretrained(self.name_or_path, trust_remote_code=True)
    return self._tokenizer

  @tokenizer.setter
  def tokenizer(self, value):
    self._tokenizer = value

  def separator_id(self) -> int:
    """<|endoftext|> (id 151643 in Qwen3 vocabularies), else the tokenizer's sep, eos or pad token."""
    tok = self.tokenizer
    tid = tok.convert_tokens_to_ids(ENDOFTEXT)
    if tid is not None and tid != tok.unk_token_id:
      return int(tid)
    for tid in (tok.sep_token_id, tok.eos_token_id, tok.pad_token_id):
      if tid is not None:
        return int(tid)
    raise ValueError("the tokenizer has no <|endoftext|>, sep, eos or pad token to separate chunks with")

  @torch.inference_mode()
  def encode(self, documents, quantization: str | None = "int8", batch_size: int = 8,
             max_length: int | None = None, convert_to_numpy: bool = True):
    """documents: lists of chunk strings, in document order. quantization: int8 (default), binary, ubinary (as
    st_quantize.FlexibleQuantizer), or None for the float32 means. A document longer than `max_length` tokens
    (default: max_position_embeddings) is refused: pplx_jax.convert.torch_contextual.contextual_embed encodes long
    documents in overlapping windows."""
    from .st_quantize import quantize

    tok = self.tokenizer
    sep = self.separator_id()
    pad = tok.pad_token_id if tok.pad_token_id is not None else sep
    max_length = max_length or self.config.max_position_embeddings
    rows = []  # (token ids, span ids: k + 1 on chunk k, 0 on separators) per document
    for d, chunks in enumerate(documents):
      if isinstance(chunks, str) or not len(chunks):
        raise ValueError(f"document {d}: expected a non-empty list of chunk strings")
      ids, spans = [], []
      for k, chunk_ids in enumerate(tok(list(chunks))["input_ids"]):
        if k:
          ids.append(sep)
          spans.append(0)
        ids.extend(chunk_ids)
        spans.extend([k + 1] * len(chunk_ids))
      if len(ids) > max_length:
        raise ValueError(f"document {d}: {len(ids)} tokens > max_length={max_length}")
      rows.append((ids, spans, len(chunks)))
    device = self.embed_tokens.weight.device
    out = []
    for s in range(0, len(rows), batch_size):
      part = rows[s:s + batch_size]
      width = max(len(ids) for ids, _, _ in part)
      ids = torch.full((len(part), width), pad, dtype=torch.long)
      mask = torch.zeros((len(part), width), dtype=torch.long)
      spans = torch.zeros((len(part), width), dtype=torch.long)
      for r, (row_ids, row_spans, _) in enumerate(part):
        ids[r, :len(row_ids)] = torch.tensor(row_ids)
        mask[r, :len(row_ids)] = 1
        spans[r, :len(row_ids)] = torch.tensor(row_spans)
      hidden = self(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state.float().cpu()
      for r, (_, _, n) in enumerate(part):
        onehot = (spans[r][:, None] == torch.arange(1, n + 1)).float()  # [S, n_chunks]
        means = (onehot.T @ hidden[r]) / onehot.sum(0).clamp(min=1.0)[:, None]
        emb = means if quantization is None else quantize(means, quantization)
        out.append(emb.numpy() if convert_to_numpy else emb)
    return out
