"""Shared plumbing of the stages' grain input pipelines: checkpointable iterators and process sharding.

- `CheckpointableIterator`: a grain iterator whose position (`get_state`) is saved with the model and restored
  exactly (`set_state`), refusing a position saved with other settings;
- `shard_spec` / `process_rows`: each process reads only the records of its own rows of every global batch, so the
  global batch does not depend on the number of processes;
- `PhasedPipeline` (a curriculum of mixtures, phase by phase) and `StepStamped` (every batch stamped with its
  position, for losses that follow a schedule): wrappers that keep their own counters in the iterator state.
"""

from __future__ import annotations

import weakref
from typing import Callable

import numpy as np


def shard_spec(n: int, shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
  if shard_index is None or shard_count is None:
    import jax

    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index must be in [0, {shard_count}), got {shard_index}")
  if n < shard_count:
    raise ValueError(f"{n} records cannot feed {shard_count} shards (processes): every shard needs a record")
  return shard_index, shard_count


class _Rows:
  """A global batch (list of items) -> this process's rows of it."""

  def __init__(self, start: int, stop: int):
    self.start, self.stop = start, stop

  def __call__(self, items):
    return items[self.start:self.stop]


def process_rows(ds, batch_size: int, shard_index: int, shard_count: int):
  """A MapDataset of items (record indices) -> lists of this process's `batch_size` items of each global batch.

  The stream is cut into global batches of `batch_size * shard_count` items and process i keeps items
  ``[i * batch_size, (i + 1) * batch_size)`` of each: the global batch is the same for any number of processes, and
  each process reads only the records of its own rows. An incomplete final global batch is dropped."""
  ds = ds.batch(batch_size * shard_count, drop_remainder=True, batch_fn=list)
  return ds.map(_Rows(shard_index * batch_size, (shard_index + 1) * batch_size))


class CheckpointableIterator:
  """A grain iterator whose position is saved with the model: subclasses set `_state_format` and `_config` (the
  settings the position depends on) and call `_start(dataset)`."""

  _state_format: str

  def _start(self, ds) -> None:
    self.dataset = ds
    self._iterator = iter(ds)
    # Stop grain's prefetch threads before interpreter shutdown (their __del__ fails once modules are gone).
    self._finalizer = weakref.finalize(self, close_iterator, self._iterator)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._iterator)

  def get_state(self) -> dict:
    """JSON-serialisable position (after the last batch returned) plus the settings it depends on."""
    return {"format": self._state_format, "config": dict(self._config), "iterator": self._iterator.get_state()}

  def set_state(self, state: dict) -> None:
    """Resume from `get_state()` (possibly JSON round-tripped); the settings must match."""
    fmt = self._state_format
    if not isinstance(state, dict) or state.get("format") != fmt:
      raise ValueError(f"not a {fmt} state: {str(state)[:200]}")
    diff = {k: (v, self._config.get(k)) for k, v in state["config"].items() if self._config.get(k) != v}
    if diff:
      raise ValueError("data-iterator state was saved with other settings (saved, current): "
                       + ", ".join(f"{k}={a!r} vs {b!r}" for k, (a, b) in sorted(diff.items()))
                       + "; the data position cannot be restored exactly")
    self._iterator.set_state(self._iterator_state_from_json(state["iterator"]))

  def _iterator_state_from_json(self, state):
    return state

  def close(self) -> None:
    """Stop prefetching (threads or worker processes); the pipeline cannot be used afterwards."""
    self._finalizer()


def close_iterator(iterator) -> None:
  """Close a grain iterator chain once; later calls (its __del__ at interpreter exit) become no-ops."""
  iterator.close()
  todo = [iterator]
  while todo:
    node = todo.pop()
    node.close = _noop
    todo.extend(getattr(node, "_parents", ()))


def _noop() -> None:
  pass


def absl_flags_parsed() -> None:
  # grain's worker processes read absl flags; outside absl.app.run they are unparsed and raise.
  from absl import flags

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


class PhasedPipeline:
  """Curriculum: phase p uses its own mixture weights until its `until_step`; the state records the phase."""

  def __init__(self, make: Callable[[int], object], ends: list[int]):
    self.make, self.ends = make, ends
    self.phase, self.served = 0, 0
    self.inner = make(0)

  def _advance(self):
    while self.phase < len(self.ends) - 1 and self.served >= self.ends[self.phase]:
      self.phase += 1
      self.inner = self.make(self.phase)

  def __next__(self):
    self._advance()
    batch = dict(next(self.inner))
    self.served += 1
    if "dataset" in batch and hasattr(self.inner, "source_index"):  # phase-local index -> index in data.sources
      batch["dataset"] = np.asarray(self.inner.source_index, np.int32)[batch["dataset"]]
    batch["phase"] = np.full((len(batch["q_ids"]),), self.phase, np.int32)
    return batch

  def get_state(self):
    return {"phase": self.phase, "served": self.served, "inner": self.inner.get_state()}

  def set_state(self, state):
    self.phase, self.served = int(state["phase"]), int(state["served"])
    self.inner = self.make(self.phase)
    self.inner.set_state(state["inner"])


class StepStamped:
  """Adds `step` [B] (batches served before this one) to every batch; the count is part of the iterator state."""

  def __init__(self, inner):
    self.inner, self.served = inner, 0

  def __iter__(self):
    return self

  def __next__(self):
    batch = dict(next(self.inner))
    batch["step"] = np.full((len(batch["gold"]),), self.served, np.int32)
    self.served += 1
    return batch

  def get_state(self):
    return {"served": self.served, "inner": self.inner.get_state()}

  def set_state(self, state):
    self.served = int(state["served"])
    self.inner.set_state(state["inner"])
