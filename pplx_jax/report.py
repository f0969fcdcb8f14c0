"""Plots of a run's metrics.jsonl (PNG), for notes, reports and the quickstart."""

from __future__ import annotations

from pathlib import Path

from pplx_jax.train.metrics import read_jsonl


def plot_pretraining(workdir: str | Path, out: str | Path | None = None) -> Path:
  """Training loss / masked CE and held-out masked CE at fixed mask ratios against the step."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  workdir = Path(workdir)
  rows = read_jsonl(workdir / "metrics.jsonl")
  if not rows:
    raise FileNotFoundError(f"{workdir / 'metrics.jsonl'}: no metrics to plot")
  out = Path(out) if out else workdir / "pretraining.png"
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
  train = [r for r in rows if "loss" in r]
  for key, label in (("loss", "loss (NELBO / token)"), ("masked_ce", "masked-token CE")):
    ax1.plot([r["step"] for r in train], [r[key] for r in train], label=label, lw=1)
  ax1.set_xlabel("step")
  ax1.set_title("training")
  ax1.legend()
  evals = [r for r in rows if any(k.startswith("eval/ce@") for k in r)]
  keys = sorted({k for r in evals for k in r if k.startswith("eval/ce@")})
  for key in keys:
    pts = [(r["step"], r[key]) for r in evals if key in r]
    ax2.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"mask ratio {key.split('@')[1]}")
  ax2.set_xlabel("step")
  ax2.set_title("held-out masked-token cross-entropy")
  ax2.legend()
  fig.tight_layout()
  fig.savefig(out, dpi=110)
  plt.close(fig)
  return out
