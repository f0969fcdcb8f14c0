"""grain input pipeline for diffusion pretraining: tokenize, pack into rows with segment ids, batch.

    records (TFDS data source) ─ this process's shard ─ shuffle(seed) per epoch ─ repeat
      ─ tokenize (+EOS) ─ concat-then-split packing into rows of seq_len ─ batch ─ prefetch

Every batch is ``{"input_ids": int32[b, seq_len], "segment_ids": int32[b, seq_len]}``: in each row the
documents (or document pieces) are numbered 1, 2, ... and 0 marks padding (``input_ids`` there is the
tokenizer's pad id). Attention must not cross segments. Packing is grain's
``ConcatThenSplitIterDataset``: documents are concatenated in order and cut every ``seq_len`` tokens,
so no token is dropped and rows are full except the very last one of a finite pipeline; a document cut
at a row boundary continues, as a new segment, at the start of the next row. A final incomplete batch is
completed with all-padding rows, so every batch has the same shape.

Determinism and checkpoints: the order depends only on ``seed``, the epoch, the shard and the data
(grain's index shuffle with seed + epoch), and ``get_state()`` is a small JSON-serialisable dict: a
pipeline restored with ``set_state(state)`` yields exactly the batches the original would have yielded.
Each process reads only records ``shard_index::shard_count`` (by default its JAX process index/count). Training
uses :class:`PackedStreams`, which shards by a fixed number of packing streams so that the global batch does not
depend on the number of processes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np

from pplx_jax.data import prepared
from pplx_jax.data.loader import CheckpointableIterator, absl_flags_parsed, close_iterator, shard_spec

STATE_FORMAT = "pplx_jax.pretrain_pipeline/1"
_READ_CHUNK = 64  # records per batched read


def _document_text(record) -> str:
  """A record of a prepared dataset (dict with "text"), or a bare str/bytes, as str."""
  text = record["text"] if isinstance(record, dict) else record
  if isinstance(text, np.ndarray):
    text = text.item()
  if isinstance(text, bytes):
    text = text.decode("utf-8")
  if not isinstance(text, str):
    raise TypeError(f"expected a text record (dict with 'text', str or bytes), got {type(record).__name__}")
  return text


class _ReadAndTokenize:
  """A chunk of record indices -> [{"input_ids": int32[n]} (+ EOS)], documents without tokens left out.

  The records are fetched with one batched read (`__getitems__`) where the source has it: a TFDS
  ArrayRecord source serves a batch far faster than single records (measured ~40 us vs ~1 ms each).
  """

  def __init__(self, source, tokenizer, add_eos: bool):
    self._source = source
    self._tokenizer = tokenizer
    self._eos = tokenizer.eos_id if add_eos else None

  def __call__(self, indices) -> list[dict]:
    out = []
    for record in prepared.read_records(self._source, [int(i) for i in indices]):
      ids = self._tokenizer.encode_plain(_document_text(record))
      if self._eos is not None:
        ids.append(self._eos)
      if ids:
        out.append({"input_ids": np.asarray(ids, dtype=np.int32)})
    return out


class _Unbatch(grain.experimental.FlatMapTransform):
  """A chunk (list) -> its elements, in order."""

  max_fan_out = 1 << 20  # only used by MapDataset flat maps; ours runs on an IterDataset

  def flat_map(self, element):
    return element


class _Collate:
  """Packed rows -> one batch of fixed shape [batch_size, seq_len] (missing rows are all padding)."""

  def __init__(self, batch_size: int, seq_len: int, pad_id: int):
    self._shape = (batch_size, seq_len)
    self._pad_id = pad_id

  def __call__(self, rows: Sequence[dict]) -> dict:
    input_ids = np.full(self._shape, self._pad_id, dtype=np.int32)
    segment_ids = np.zeros(self._shape, dtype=np.int32)
    for i, row in enumerate(rows):
      seg = row["input_ids_segment_ids"]
      segment_ids[i] = seg
      input_ids[i] = np.where(seg > 0, row["input_ids"], self._pad_id)
    return {"input_ids": input_ids, "segment_ids": segment_ids}


def _packed_rows(source, tokenizer, seq_len: int, *, shard_index: int, shard_count: int, seed: int | None,
                 num_epochs: int | None, add_eos: bool, read_threads: int):
  """IterDataset of packed rows of this shard (shuffled per epoch if seed is not None)."""
  if add_eos and tokenizer.eos_id is None:
    raise ValueError("add_eos=True but the tokenizer has no eos token")
  # grain shards, shuffles and repeats record *indices*; records are read and tokenized in chunks.
  ds = grain.MapDataset.range(len(source))[shard_index::shard_count]
  if seed is not None:
    ds = ds.shuffle(seed=seed)  # before repeat: each epoch is a new permutation (seed + epoch)
  if num_epochs != 1:
    ds = ds.repeat(num_epochs)
  ds = ds.batch(_READ_CHUNK, batch_fn=list).map(_ReadAndTokenize(source, tokenizer, add_eos))
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=2 * max(read_threads, 1)))
  ds = grain.experimental.FlatMapIterDataset(ds, _Unbatch())
  return grain.experimental.ConcatThenSplitIterDataset(ds, length_struct={"input_ids": seq_len})


def _tuple_slices(state: Any) -> Any:
  """JSON turns ConcatThenSplit's (start, stop) slice tuples into lists; grain compares them to tuples."""
  if isinstance(state, dict):
    return {k: ({f: tuple(v) for f, v in s.items()} if k == "remainder_slices" else _tuple_slices(s))
            for k, s in state.items()}
  if isinstance(state, list):
    return [_tuple_slices(s) for s in state]
  return state


class PretrainPipeline(CheckpointableIterator):
  """Iterator of packed pretraining batches for one process (see the module docstring).

  Args:
    source: random-access records (``load_split(...)``, or any sequence of dicts with "text", str or bytes).
    tokenizer: a :class:`pplx_jax.core.tokenizers.Tokenizer` (``encode_plain`` is used; EOS appended if add_eos).
    seq_len: row length in tokens.
    batch_size: rows per batch *in this process*.
    seed: shuffle seed (0 <= seed < 2**32); epoch e uses a permutation seeded with seed + e.
    num_epochs: passes over this shard; None repeats forever.
    shard_index, shard_count: which records this process reads (``shard_index::shard_count``);
      default ``jax.process_index()`` / ``jax.process_count()``.
    add_eos: append the tokenizer's EOS to every document.
    worker_count: grain worker processes (``mp_prefetch``); 0 packs in this process (a background
      thread prefetches ``prefetch_batches`` batches). Changing it changes the batches (each worker
      packs its own slice), so resume with the same value.
    read_threads: grain threads reading and tokenizing records.
  """

  _state_format = STATE_FORMAT

  def __init__(self, source, tokenizer, seq_len: int, batch_size: int, seed: int = 0,
               num_epochs: int | None = None, shard_index: int | None = None, shard_count: int | None = None,
               add_eos: bool = True, worker_count: int = 0, read_threads: int = 8, prefetch_batches: int = 2):
    if seq_len < 1 or batch_size < 1:
      raise ValueError(f"seq_len and batch_size must be positive, got {seq_len} and {batch_size}")
    if num_epochs is not None and num_epochs < 1:
      raise ValueError(f"num_epochs must be positive or None, got {num_epochs}")
    if not 0 <= seed < 2**32:
      raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    shard_index, shard_count = shard_spec(len(source), shard_index, shard_count)
    self.seq_len, self.batch_size = seq_len, batch_size
    self.shard_index, self.shard_count = shard_index, shard_count
    self._config = {
        "num_records": len(source), "seq_len": seq_len, "batch_size": batch_size, "seed": seed,
        "num_epochs": num_epochs, "shard_index": shard_index, "shard_count": shard_count,
        "add_eos": add_eos, "worker_count": worker_count, "vocab_size": tokenizer.vocab_size,
    }
    ds = _packed_rows(source, tokenizer, seq_len, shard_index=shard_index, shard_count=shard_count, seed=seed,
                      num_epochs=num_epochs, add_eos=add_eos, read_threads=read_threads)
    ds = ds.batch(batch_size, batch_fn=_Collate(batch_size, seq_len, tokenizer.pad_id))
    if worker_count > 0:
      absl_flags_parsed()
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    elif prefetch_batches > 0:
      ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=prefetch_batches)
    self._start(ds)

  def _iterator_state_from_json(self, state):
    return _tuple_slices(state)  # JSON turned the packer's tuple markers into lists


PACKED_STREAMS_FORMAT = "pplx_jax.packed_streams/1"


class PackedStreams:
  """Training batches of packed rows that are the same for any number of processes.

  Packing is sequential (a row continues where the previous one stopped), so rows packed from one process's records
  depend on how many processes share the data. Here the data is split into a fixed number of packing *streams*
  instead: stream s packs records ``s::num_streams`` (a :class:`PretrainPipeline`) and contributes
  ``global_batch / num_streams`` consecutive rows to every global batch. A process runs only its own streams (the
  ``num_streams / shard_count`` streams whose rows it holds) and reads only their records; the global batch, and so
  the training run, does not depend on the number of processes, and a checkpointed position restores on another
  process count.

  `get_state()` is a collective when `shard_count > 1` (every process must call it, as checkpoint saves do): each
  process knows only its own streams' positions, and the saved state holds all of them.
  """

  def __init__(self, source, tokenizer, seq_len: int, global_batch: int, num_streams: int, *, seed: int = 0,
               shard_index: int = 0, shard_count: int = 1, add_eos: bool = True, read_threads: int = 8,
               prefetch_batches: int = 2):
    if num_streams < 1 or global_batch % num_streams:
      raise ValueError(f"global batch {global_batch} is not divisible by {num_streams} packing streams "
                       "(data.packing_streams)")
    if num_streams % shard_count:
      raise ValueError(f"{num_streams} packing streams (data.packing_streams) cannot be split evenly over "
                       f"{shard_count} processes; use a multiple of {shard_count} that divides the global batch "
                       f"{global_batch}")
    per = num_streams // shard_count
    self.streams = list(range(shard_index * per, (shard_index + 1) * per))
    self.shard_count = shard_count
    threads = max(1, read_threads // per)
    self._pipes = {s: PretrainPipeline(source, tokenizer, seq_len, global_batch // num_streams, seed=seed,
                                       shard_index=s, shard_count=num_streams, add_eos=add_eos, read_threads=threads,
                                       prefetch_batches=prefetch_batches)
                   for s in self.streams}
    self._config = {"num_streams": num_streams, "global_batch": global_batch, "seq_len": seq_len, "seed": seed}

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    parts = [next(self._pipes[s]) for s in self.streams]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def get_state(self) -> dict:
    local = {str(s): self._pipes[s].get_state() for s in self.streams}
    if self.shard_count > 1:
      from pplx_jax.core.distributed import allgather_json
      local = {k: v for part in allgather_json(local) for k, v in part.items()}
    return {"format": PACKED_STREAMS_FORMAT, "config": dict(self._config), "streams": local}

  def set_state(self, state: dict) -> None:
    if not isinstance(state, dict) or state.get("format") != PACKED_STREAMS_FORMAT:
      raise ValueError(f"not a {PACKED_STREAMS_FORMAT} state: {str(state)[:200]}")
    if state["config"] != self._config:
      raise ValueError(f"data-iterator state was saved with other settings: {state['config']} vs {self._config}; "
                       "the data position cannot be restored exactly")
    for s in self.streams:
      self._pipes[s].set_state(state["streams"][str(s)])

  def close(self) -> None:
    for p in self._pipes.values():
      p.close()


def default_packing_streams(global_batch: int) -> int:
  """gcd(global batch, 64): up to 64 processes (v5p-256 has 64 hosts) share the data without changing it."""
  import math
  return math.gcd(int(global_batch), 64)


def eval_batches(source, tokenizer, seq_len: int, batch_size: int, max_batches: int | None = None, *,
                 add_eos: bool = True, shard_index: int | None = None, shard_count: int | None = None,
                 read_threads: int = 8) -> Iterator[dict[str, np.ndarray]]:
  """Deterministic, finite evaluation batches (same format as :class:`PretrainPipeline`), no shuffling.

  One pass over this process's shard of `source`, in record order. With `max_batches`, exactly
  `max_batches` batches are yielded (all-padding batches once the shard is exhausted), so that every
  process runs the same number of evaluation steps; without it, as many as the shard fills.
  """
  shard_index, shard_count = shard_spec(len(source), shard_index, shard_count)
  ds = _packed_rows(source, tokenizer, seq_len, shard_index=shard_index, shard_count=shard_count, seed=None,
                    num_epochs=1, add_eos=add_eos, read_threads=read_threads)
  collate = _Collate(batch_size, seq_len, tokenizer.pad_id)
  n = 0
  it = iter(ds.batch(batch_size, batch_fn=collate))
  try:
    while max_batches is None or n < max_batches:
      try:
        batch = next(it)
      except StopIteration:
        break
      yield batch
      n += 1
  finally:
    close_iterator(it)
  while max_batches is not None and n < max_batches:
    yield collate([])
    n += 1
