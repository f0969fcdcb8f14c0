"""Metrics to JSONL and TensorBoard, and what a person watching the run sees (a bar when interactive, else lines)."""

from __future__ import annotations

import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Mapping

from pplx_jax.core import paths


class MetricsWriter:
  """Only process 0 writes; every process may call it.

  A bucket (gs://) workdir cannot be appended to: metrics.jsonl and tensorboard/ are written to a local mirror and
  copied to the bucket by `sync()` (the trainer calls it at every checkpoint) and at `close()`; a resumed run first
  fetches the bucket's metrics.jsonl, so the file keeps every row."""

  def __init__(self, workdir: str | Path, enabled: bool = True, tensorboard: bool = True):
    self.enabled = enabled
    self.remote = paths.as_path(workdir) if paths.is_url(workdir) else None
    local = Path(workdir)
    if self.remote is not None and enabled:
      local = Path(tempfile.mkdtemp(prefix="pplx-metrics-"))
      if (self.remote / "metrics.jsonl").is_file():
        paths.copy_tree(self.remote / "metrics.jsonl", local / "metrics.jsonl")
    self.local = local
    self.path = local / "metrics.jsonl"
    self._tb = None
    if enabled:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      self._file = open(self.path, "a", buffering=1)
      if tensorboard:
        try:
          from tensorboardX import SummaryWriter
          self._tb = SummaryWriter(str(local / "tensorboard"), flush_secs=10)
        except ImportError:  # optional: JSONL alone is enough
          self._tb = None

  def write(self, step: int, metrics: Mapping[str, float], prefix: str = "") -> None:
    if not self.enabled:
      return
    row = {"step": int(step), "time": time.time()}
    row.update({f"{prefix}{k}": _plain(v) for k, v in metrics.items()})
    self._file.write(json.dumps(row) + "\n")
    if self._tb is not None:
      for k, v in row.items():
        if k not in ("step", "time") and isinstance(v, (int, float)) and math.isfinite(v):
          self._tb.add_scalar(k, v, step)

  def sync(self) -> None:
    """Copy the local mirror to the bucket (nothing to do for a local workdir)."""
    if not self.enabled or self.remote is None:
      return
    if not self._file.closed:
      self._file.flush()
      if self._tb is not None:
        self._tb.flush()
    paths.copy_tree(self.path, self.remote / "metrics.jsonl")
    if (self.local / "tensorboard").is_dir():
      paths.copy_tree(self.local / "tensorboard", self.remote / "tensorboard")

  def close(self) -> None:
    if self.enabled:
      self._file.close()
      if self._tb is not None:
        self._tb.close()
      if self.remote is not None:
        self.sync()
        shutil.rmtree(self.local, ignore_errors=True)


def _plain(v):
  try:
    return float(v)
  except (TypeError, ValueError):
    return str(v)


class Progress:
  """tqdm bar on a terminal; a plain log line every `log_every` steps otherwise (CI logs, pods)."""

  def __init__(self, total: int, start: int, log_every: int, enabled: bool = True, desc: str = "train"):
    self.log_every, self.enabled, self.desc = max(int(log_every), 1), enabled, desc
    self.bar = None
    if enabled and sys.stderr.isatty():
      from tqdm import tqdm
      self.bar = tqdm(total=total, initial=start, desc=desc, dynamic_ncols=True)

  def update(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    keys = ("loss", "masked_ce", "masked_acc", "lr", "tokens_per_s", "mfu")
    shown = {k: metrics[k] for k in keys if k in metrics}
    if self.bar is not None:
      self.bar.n = step
      self.bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=True)
    elif step % self.log_every == 0:
      print(f"[{self.desc}] step {step}: " + " ".join(f"{k}={v:.4g}" for k, v in shown.items()), flush=True)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
