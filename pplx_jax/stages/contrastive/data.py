"""Contrastive training batches (:class:`PairPipeline`): grain over prepared pair/triplet datasets.

A deterministic mixture of datasets by weight, this process's shard of every global batch, per-epoch shuffles and a
JSON-serialisable iterator state (saved in every checkpoint). Each batch is ``{"q_ids", "q_mask"} [B, query_len]``,
``{"d_ids", "d_mask"} [B, doc_len]`` (int32, 1 = real token), for triplets ``{"n_ids", "n_mask"} [B, K,
negative_len]``, and ``"dataset"`` [B] (which mixture component). Texts are tokenized as `pplx-jax embed` tokenizes
them, so training and inference see the same ids.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from pplx_jax.data import prepared
from pplx_jax.data.loader import CheckpointableIterator, process_rows, shard_spec
from pplx_jax.stages.contrastive.prepare import KINDS

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Training batches

STATE_FORMAT = "pplx_jax.pair_pipeline/1"


def decode_pair(raw) -> dict:
  """A prepared-dataset record (bytes fields) or an in-memory dict -> {"query", "positive"[, "negatives"]}."""
  rec = {"query": prepared.as_text(raw["query"]), "positive": prepared.as_text(raw["positive"])}
  negs = raw.get("negatives") if isinstance(raw, Mapping) else None
  if negs is not None:
    rec["negatives"] = [prepared.as_text(n) for n in (negs.tolist() if isinstance(negs, np.ndarray) else negs)]
  return rec


class _Tag:
  """record index -> (dataset index, record index)."""

  def __init__(self, dataset: int):
    self.dataset = dataset

  def __call__(self, i):
    return self.dataset, int(i)


def _pad(rows: Sequence[Sequence[int]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  ids = np.full((len(rows), length), pad_id, np.int32)
  mask = np.zeros((len(rows), length), np.int32)
  for i, r in enumerate(rows):
    r = r[:length]
    ids[i, :len(r)] = r
    mask[i, :len(r)] = 1
  return ids, mask


class _Collate:
  """[(dataset, index)] -> one batch of token ids and masks (records read with one batched read per dataset)."""

  def __init__(self, sources, tokenizer, kind: str, query_len: int, doc_len: int, negative_len: int,
               num_negatives: int):
    self._sources = sources
    self._tok = tokenizer
    self._kind = kind
    self._lens = (query_len, doc_len, negative_len)
    self._k = num_negatives

  def __call__(self, items: Sequence[tuple[int, int]]) -> dict[str, np.ndarray]:
    records: list[dict | None] = [None] * len(items)
    by_dataset: dict[int, list[int]] = {}
    for pos, (ds, _) in enumerate(items):
      by_dataset.setdefault(ds, []).append(pos)
    for ds, positions in by_dataset.items():
      raws = prepared.read_records(self._sources[ds], [items[p][1] for p in positions])
      for p, raw in zip(positions, raws):
        records[p] = decode_pair(raw)
    q_len, d_len, n_len = self._lens
    pad = self._tok.pad_id
    q_ids, q_mask = _pad(self._tok.encode_batch([r["query"] for r in records]), q_len, pad)
    d_ids, d_mask = _pad(self._tok.encode_batch([r["positive"] for r in records]), d_len, pad)
    batch = {"q_ids": q_ids, "q_mask": q_mask, "d_ids": d_ids, "d_mask": d_mask,
             "dataset": np.asarray([ds for ds, _ in items], np.int32)}
    if self._kind == "triplet":
      negs = []
      for pos, r in enumerate(records):
        n = r.get("negatives")
        if not n:
          ds, idx = items[pos]
          raise ValueError(f"dataset {ds} record {idx} has no negatives (kind='triplet' needs them)")
        negs.extend(n[j % len(n)] for j in range(self._k))  # the first K, cycled when there are fewer
      n_ids, n_mask = _pad(self._tok.encode_batch(negs), n_len, pad)
      batch["n_ids"] = n_ids.reshape(len(records), self._k, n_len)
      batch["n_mask"] = n_mask.reshape(len(records), self._k, n_len)
    return batch


def _component_seed(seed: int, i: int) -> int:
  return int(np.random.SeedSequence([seed, i]).generate_state(1)[0])


class PairPipeline(CheckpointableIterator):
  """Iterator of contrastive training batches for one process (format: the module docstring).

  Args:
    sources: one random-access dataset or a list of them (``builders.load_split(dir, "train")`` of a
      prepared pairs/triplets dataset, or any sequence of dicts with "query", "positive"[, "negatives"]).
    tokenizer: a :class:`pplx_jax.core.tokenizers.Tokenizer`; texts are encoded as ``embed`` encodes them
      (``encode_batch``), truncated to the lengths below and padded with ``pad_id`` (mask 0).
    batch_size: examples per batch in this process. Incomplete final batches are dropped.
    weights: mixture weights, one per source (default: proportional to the sources' sizes). The mixture is
      grain's deterministic ``MapDataset.mix``: source i supplies a fraction weights[i]/sum(weights) of every
      long enough stretch of examples.
    kind: "pair" or "triplet" (triplets take the first ``num_negatives`` negatives of a record, cycling
      when it has fewer).
    seed: shuffle seed; source i, epoch e uses a permutation derived from (seed, i) and e.
    num_epochs: passes over each source; None repeats forever. With several finite sources the mixture
      ends when the first source (scaled by its weight) runs out.
    shard_index, shard_count: this process's rows ``[shard_index * batch_size, (shard_index + 1) * batch_size)`` of
      every global batch of ``batch_size * shard_count`` examples (default: ``jax.process_index()`` /
      ``jax.process_count()``); it reads only their records. The global batches, and the iterator state, are the
      same for any number of processes.
    read_threads: grain threads reading and tokenising batches.
  """

  _state_format = STATE_FORMAT

  def __init__(self, sources, tokenizer, batch_size: int, *, weights: Sequence[float] | None = None,
               kind: str = "pair", query_len: int = 64, doc_len: int = 256, negative_len: int | None = None,
               num_negatives: int = 1, seed: int = 0, num_epochs: int | None = None,
               shard_index: int | None = None, shard_count: int | None = None, read_threads: int = 4,
               prefetch_batches: int = 2):
    import grain

    if isinstance(sources, Sequence) and sources and not isinstance(sources[0], Mapping) and hasattr(
        sources[0], "__len__"):
      sources = list(sources)
    else:
      sources = [sources]
    if kind not in KINDS:
      raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    negative_len = doc_len if negative_len is None else negative_len
    if min(batch_size, query_len, doc_len, negative_len, num_negatives) < 1:
      raise ValueError("batch_size, query_len, doc_len, negative_len and num_negatives must be positive")
    if num_epochs is not None and num_epochs < 1:
      raise ValueError(f"num_epochs must be positive or None, got {num_epochs}")
    if not 0 <= seed < 2**32:
      raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    sizes = [len(s) for s in sources]
    if weights is None:
      weights = [float(n) for n in sizes]
    weights = [float(w) for w in weights]
    if len(weights) != len(sources):
      raise ValueError(f"{len(weights)} mixture weights for {len(sources)} datasets")
    if any(not w > 0 for w in weights):
      raise ValueError(f"mixture weights must be positive, got {weights}")
    shard = None
    for n in sizes:
      shard = shard_spec(n, shard_index, shard_count)
    shard_index, shard_count = shard
    self.batch_size, self.kind = batch_size, kind
    self.shard_index, self.shard_count = shard_index, shard_count
    total = sum(weights)
    self.weights = [w / total for w in weights]
    # The state is the position in the global stream: the same in every process, and valid for another count.
    self._config = {
        "num_records": sizes, "weights": self.weights, "global_batch_size": batch_size * shard_count, "kind": kind,
        "query_len": query_len, "doc_len": doc_len, "negative_len": negative_len, "num_negatives": num_negatives,
        "seed": seed, "num_epochs": num_epochs, "vocab_size": tokenizer.vocab_size,
    }
    parts = []
    for i, n in enumerate(sizes):
      ds = grain.MapDataset.range(n).shuffle(seed=_component_seed(seed, i))
      if num_epochs != 1:
        ds = ds.repeat(num_epochs)
      parts.append(ds.map(_Tag(i)))
    ds = parts[0] if len(parts) == 1 else grain.MapDataset.mix(parts, self.weights)
    collate = _Collate(sources, tokenizer, kind, query_len, doc_len, negative_len, num_negatives)
    ds = process_rows(ds, batch_size, shard_index, shard_count).map(collate)
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                              prefetch_buffer_size=max(prefetch_batches, read_threads)))
    self._start(ds)
