"""Late chunking (paper.md §5, embedding.md §3): one bidirectional pass over a document, one embedding per chunk.

Token layout. Chunks are tokenized separately (no BPE merge across a boundary, so spans are exact) and joined as

    chunk_1 SEP chunk_2 SEP ... SEP chunk_n            (one separator between neighbours, none at the ends)

with SEP = `<|endoftext|>` (id 151643) for Qwen3 vocabularies, as the released `PPLXQwen3ContextualModel` does.
Every token carries a span id: k (1-based) on the tokens of chunk k, 0 on separators (and padding). Each chunk's
embedding is the float32 mean of the final hidden states over its own tokens, separators excluded (`span_pool`).
Quantisation (`int8_ste` in training, `quantize_np` for storage) stays with the caller.

Documents longer than the context window (`max_len` tokens). Nothing in the paper sources says what pplx does (the
API caps documents at 32K tokens). The rule implemented here pools every chunk from one window of the joined
sequence that contains the whole chunk with as much context around it as fits:

  * A window is a contiguous slice [a, a + max_len) of the joined sequence (it may start or end inside a neighbouring
    chunk or on a separator: those tokens are context). Every window of a long document is exactly max_len long, so
    the total context of a chunk of length L is always max_len - L, the most that fits.
  * Candidate windows start on the grid 0, stride, 2·stride, ... plus one window flush with the end (a = T - max_len).
    A chunk of L <= max_len - stride + 1 tokens always lies inside some grid window. stride defaults to
    max_len // 2: about 2·T/max_len passes, and every chunk up to about half a window is covered by the grid.
  * Chunk k, at [s, e) in the joined sequence, goes to the candidate window that contains it (e - max_len <= a <= s)
    with the most context on its poorer side, max_a min(s - a, a + max_len - e): that tent peaks at
    a* = clip((s + e - max_len) / 2, 0, T - max_len), so it is the containing start nearest a* (ties: the earlier).
    The chunk is as centred as the grid allows, and flush with the document edge near its start or end, where one
    side cannot be filled. If no grid window contains the chunk, a window at floor(a*) is added for it; stride=1
    gives every chunk a best window over all possible windows.
  * A chunk longer than max_len on its own is truncated: it is pooled over its first max_len tokens, from a window
    holding only those tokens (no context). Such chunks are reported in `WindowPlan.truncated`.
  * Only windows that pool at least one chunk are kept. Each chunk is pooled from exactly one window; its span ids
    there are its *global* chunk index + 1; tokens of other chunks in that window are context only (span id 0).
  * A document that fits (T <= max_len, or max_len None) gives exactly one window, identical to `join_chunks`.

Positions restart at 0 in each window: a window is encoded as a document of its own.

Batching. `batch_documents` lays the windows of many documents out as right-padded rows (one window per row, span ids
renumbered 1..n within the row); `late_chunk_embed` runs the model once on all rows and pools every span;
`gather_chunks` puts the per-row spans back in document order, then chunk order.
"""

from __future__ import annotations

import bisect
import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pplx_jax.core.sharding import constrain
from pplx_jax.models.pooling import span_pool

QWEN3_SEP_ID = 151643  # <|endoftext|>, the tokenizer's sep_token in the released contextual model


@dataclasses.dataclass(frozen=True)
class Window:
  """One model input of a document. span_ids: global chunk index + 1 on the tokens of the chunks pooled from this
  window, 0 elsewhere (separators and context-only tokens)."""
  start: int  # offset of the window in the joined document
  ids: np.ndarray  # [L] int32
  span_ids: np.ndarray  # [L] int32
  chunks: tuple[int, ...]  # 0-based global indices of the chunks pooled here, ascending


@dataclasses.dataclass(frozen=True)
class WindowPlan:
  windows: tuple[Window, ...]
  num_chunks: int
  truncated: tuple[int, ...] = ()  # chunks longer than max_len, pooled over their first max_len tokens only


def _check_chunks(chunk_token_ids: Sequence[Sequence[int]]) -> None:
  if len(chunk_token_ids) == 0:
    raise ValueError("late chunking: a document needs at least one chunk")
  for k, chunk in enumerate(chunk_token_ids):
    if len(chunk) == 0:
      raise ValueError(f"late chunking: chunk {k} is empty (a chunk with no tokens cannot be pooled)")


def _join(chunk_token_ids: Sequence[Sequence[int]], sep_id: int) -> tuple[np.ndarray, np.ndarray]:
  _check_chunks(chunk_token_ids)
  ids, spans = [], []
  for k, chunk in enumerate(chunk_token_ids):
    if k:
      ids.append(sep_id)
      spans.append(0)
    ids.extend(int(t) for t in chunk)
    spans.extend([k + 1] * len(chunk))
  return np.asarray(ids, np.int32), np.asarray(spans, np.int32)


def join_chunks(chunk_token_ids: Sequence[Sequence[int]], sep_id: int = QWEN3_SEP_ID,
                max_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """chunk_1 SEP chunk_2 ... SEP chunk_n -> (ids [S] int32, span_ids [S] int32: k on chunk k, 0 on separators).

  Raises ValueError on an empty chunk (naming its index) and when the joined document exceeds max_len: a silent cut
  would drop whole chunks, so long documents go through `plan_windows` instead.
  """
  ids, spans = _join(chunk_token_ids, sep_id)
  if max_len is not None and len(ids) > max_len:
    raise ValueError(f"late chunking: the joined document has {len(ids)} tokens > max_len={max_len}; "
                     "use plan_windows / batch_documents for overlapping windows")
  return ids, spans


def _chunk_bounds(chunk_token_ids: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
  """[s, e) of every chunk in the joined sequence (one separator between neighbours)."""
  bounds, s = [], 0
  for chunk in chunk_token_ids:
    bounds.append((s, s + len(chunk)))
    s += len(chunk) + 1
  return bounds


def _window_start(s: int, e: int, total: int, max_len: int, grid: list[int]) -> int:
  """The start of the window chunk [s, e) is pooled from (see the module docstring)."""
  # min(left, right) = min(s - a, a + max_len - e) is a tent in a peaking at (s + e - max_len) / 2; the grid start
  # nearest the (clamped) peak among those containing the chunk maximises it.
  peak = min(max((s + e - max_len) / 2, 0), total - max_len)
  lo, hi = e - max_len, s  # the starts whose window contains the whole chunk; lo <= peak <= hi
  i = bisect.bisect_left(grid, peak)
  candidates = [a for a in grid[max(i - 1, 0):i + 1] if lo <= a <= hi]  # nearest on either side
  if not candidates:
    return int(peak)  # floor: on a tie the extra context token goes to the right
  return min(candidates, key=lambda a: (abs(a - peak), a))


def plan_windows(chunk_token_ids: Sequence[Sequence[int]], sep_id: int = QWEN3_SEP_ID, max_len: int | None = None,
                 stride: int | None = None) -> WindowPlan:
  """The windows a document is encoded in, and which chunk each window pools (rule: module docstring)."""
  ids, spans = _join(chunk_token_ids, sep_id)
  n, total = len(chunk_token_ids), len(ids)
  if max_len is None or total <= max_len:
    return WindowPlan((Window(0, ids, spans, tuple(range(n))),), n)
  if max_len < 1:
    raise ValueError(f"late chunking: max_len={max_len} must be positive")
  stride = max(1, max_len // 2) if stride is None else int(stride)
  if stride < 1:
    raise ValueError(f"late chunking: stride={stride} must be positive")
  grid = sorted(set(range(0, total - max_len + 1, stride)) | {total - max_len})
  assigned: dict[int, list[int]] = {}
  truncated = []
  for k, (s, e) in enumerate(_chunk_bounds(chunk_token_ids)):
    if e - s > max_len:
      truncated.append(k)
      start = s  # the chunk's head, no context
    else:
      start = _window_start(s, e, total, max_len, grid)
    assigned.setdefault(start, []).append(k)
  windows = []
  for start in sorted(assigned):
    chunks = tuple(sorted(assigned[start]))
    w_spans = spans[start:start + max_len]
    pooled = np.isin(w_spans, np.asarray(chunks) + 1)
    windows.append(Window(start, ids[start:start + max_len].copy(), np.where(pooled, w_spans, 0).astype(np.int32),
                          chunks))
  return WindowPlan(tuple(windows), n, tuple(truncated))


def batch_documents(docs: Sequence[Sequence[Sequence[int]]], sep_id: int = QWEN3_SEP_ID, max_len: int | None = None,
                    pad_id: int = 0, stride: int | None = None, rows_multiple: int = 1,
                    length: int | None = None) -> dict:
  """Right-padded rows for the windows of many documents (docs[i][k] = token ids of chunk k of document i).

  Returns a dict of numpy arrays:
    input_ids, attention_mask, span_ids [R, L] int32 -- span ids renumbered 1..n within each row (0 elsewhere);
    span_doc, span_chunk [R, num_spans] int32 -- document and chunk of row r's span j+1 (-1 on unused slots);
    chunk_row, chunk_slot [M] int32 -- where chunk m (documents in order, then chunks) sits in the pooled output;
    doc_offsets [len(docs) + 1] int64 -- document i owns chunks doc_offsets[i]:doc_offsets[i+1];
  and the Python values num_spans (static for `late_chunk_embed`) and truncated (list of (doc, chunk) pairs).
  rows_multiple pads R with empty rows (e.g. to the number of batch shards); length fixes L (static shapes).
  """
  if len(docs) == 0:
    raise ValueError("late chunking: no documents")
  rows, truncated = [], []
  for i, doc in enumerate(docs):
    try:
      plan = plan_windows(doc, sep_id, max_len, stride)
    except ValueError as err:
      raise ValueError(f"document {i}: {err}") from None
    truncated.extend((i, k) for k in plan.truncated)
    rows.extend((i, w) for w in plan.windows)
  num_rows = -(-len(rows) // rows_multiple) * rows_multiple
  width = max(len(w.ids) for _, w in rows)
  if length is not None:
    if length < width:
      raise ValueError(f"late chunking: a window has {width} tokens > length={length}")
    width = length
  num_spans = max(len(w.chunks) for _, w in rows)
  out = {
      "input_ids": np.full((num_rows, width), pad_id, np.int32),
      "attention_mask": np.zeros((num_rows, width), np.int32),
      "span_ids": np.zeros((num_rows, width), np.int32),
      "span_doc": np.full((num_rows, num_spans), -1, np.int32),
      "span_chunk": np.full((num_rows, num_spans), -1, np.int32),
  }
  where: dict[tuple[int, int], tuple[int, int]] = {}
  for r, (i, w) in enumerate(rows):
    n = len(w.ids)
    out["input_ids"][r, :n] = w.ids
    out["attention_mask"][r, :n] = 1
    local = np.zeros(n, np.int32)
    for j, k in enumerate(w.chunks):
      local[w.span_ids == k + 1] = j + 1
      out["span_doc"][r, j], out["span_chunk"][r, j] = i, k
      where[(i, k)] = (r, j)
    out["span_ids"][r, :n] = local
  order = [where[(i, k)] for i, doc in enumerate(docs) for k in range(len(doc))]
  out["chunk_row"] = np.asarray([r for r, _ in order], np.int32)
  out["chunk_slot"] = np.asarray([j for _, j in order], np.int32)
  out["doc_offsets"] = np.cumsum([0] + [len(doc) for doc in docs]).astype(np.int64)
  out["num_spans"] = int(num_spans)
  out["truncated"] = truncated
  return out


def chunk_means(hidden: jax.Array, attention_mask: jax.Array, span_ids: jax.Array, num_spans: int) -> jax.Array:
  """The float32 mean of each span of final hidden states -> [R, num_spans, D] (zeros on unused slots): the one
  late-chunking pooling, shared by inference and contextual training.

  Span ids on padding are ignored (multiplied by the mask), so a caller's stray id on a pad token cannot leak a
  padding state into a chunk.
  """
  spans = span_ids.astype(jnp.int32) * (attention_mask != 0).astype(jnp.int32)
  return constrain(span_pool(hidden, spans, num_spans), ("act_batch", None, None))


def late_chunk_embed(model, input_ids: jax.Array, attention_mask: jax.Array, span_ids: jax.Array,
                     num_spans: int) -> jax.Array:
  """One bidirectional pass, then `chunk_means`: -> [R, num_spans, D]. Jittable with num_spans static."""
  return chunk_means(model(input_ids, attention_mask), attention_mask, span_ids, num_spans)


def gather_chunks(span_embeddings, batch: dict) -> np.ndarray:
  """Per-row spans [R, num_spans, D] -> [num_chunks_total, D] in document order, then chunk order (split with
  batch["doc_offsets"])."""
  emb = np.asarray(span_embeddings)
  return emb[batch["chunk_row"], batch["chunk_slot"]]


def split_documents(chunk_embeddings: np.ndarray, batch: dict) -> list[np.ndarray]:
  """[num_chunks_total, D] -> one [n_chunks_i, D] array per document."""
  off = batch["doc_offsets"]
  return [chunk_embeddings[off[i]:off[i + 1]] for i in range(len(off) - 1)]
