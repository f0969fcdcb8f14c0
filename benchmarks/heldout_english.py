#!/usr/bin/env python
"""Held-out English: does the tiny pipeline's model rank real text it never saw better than an untrained model?

    python benchmarks/heldout_english.py --run runs/pipeline [--seeds 5] [--json out.json]   # ~2 min on 2 cores
    python benchmarks/heldout_english.py --seeds 5        # the random-init rows and baselines only (no run)
    python benchmarks/heldout_english.py --seeds 0 --no-minilm --model CKPT [--model CKPT2]   # checkpoints alone

The set is `pplx-jax eval --data manpages`: every usable English man page under /usr/share/man (Debian's man pages
are held out from all training), query = the NAME line's description ("list directory contents"), document = the
first 200 words of its DESCRIPTION section, every query against every document. Rows, all on this one set:

* every stage's model of the run (`RUN/<stage>`) and the run's export (`RUN/export/hf`, what a user downloads);
* random init of the run's model config with the real Qwen3 tokenizer (`core.tokenizers.qwen3_tokenizer`, vocab
  151,936 as in Qwen3's checkpoints) and with the run's own tokenizer, `--seeds` seeds each (mean ± sd): an
  untrained mean-pooled encoder is close to a random projection of the text's bag of tokens, a lexical matcher whose
  quality depends on how whole its tokens are;
* BM25 and all-MiniLM-L6-v2.

Per model: nDCG@10 and Recall@100 (float32 cosine, full dimension, at `--max-length` tokens as the tiny pipeline's
evaluation), and two collapse diagnostics of the document embeddings: the mean cosine between documents and the
share of their variance in the top principal direction (a collapsed encoder maps every text near one vector: mean
cosine -> 1). Per tokenizer: tokens per whitespace word on the set (fragmentation).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

STAGES = ("pretrain", "pair", "contextual", "triplet", "merged")
QWEN3_VOCAB = 151_936  # Qwen3 checkpoints' (padded) embedding rows


def collapse_stats(emb: np.ndarray, sample: int = 2000, seed: int = 0) -> dict[str, float]:
  """Mean off-diagonal cosine of (a sample of) the rows, and the top principal direction's variance share."""
  x = emb[np.random.default_rng(seed).permutation(len(emb))[:sample]].astype(np.float64)
  u = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  c = u @ u.T
  n = len(u)
  mean_cos = (c.sum() - np.trace(c)) / (n * (n - 1))
  s = np.linalg.svd(u - u.mean(0), compute_uv=False) ** 2
  return {"mean_cos": float(mean_cos), "top_pc": float(s[0] / s.sum())}


def tokens_per_word(tok, texts) -> float:
  words = sum(len(t.split()) for t in texts)
  return sum(len(ids) for ids in tok.encode_batch(list(texts))) / max(words, 1)


def score(q: np.ndarray, d: np.ndarray, rel) -> dict[str, float]:
  from pplx_jax.eval.metrics import retrieval_scores
  r = retrieval_scores(q, d, rel, (10, 100), "float32", (None,))
  out = {"ndcg@10": r["float32/full/ndcg@10"], "recall@100": r["float32/full/recall@100"]}
  out.update(collapse_stats(d))
  return out


def embed_in_memory(model, tok, texts, max_length: int, batch_size: int) -> np.ndarray:
  from pplx_jax.inference.embed import embed_with_model
  return embed_with_model(model, tok, texts, "mean", max_length=max_length, batch_size=batch_size)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--run", default=None, help="a tiny pipeline workdir (its stages, export and tokenizer)")
  p.add_argument("--model", action="append", default=[],
                 help="also score this model (any path checkpoint.resolve takes; repeatable)")
  p.add_argument("--seeds", type=int, default=5, help="random-init seeds per tokenizer")
  p.add_argument("--model-config", default="configs/model/tiny.py",
                 help="model config of the random-init rows when there is no --run (with --run: the run's export)")
  p.add_argument("--tokenizer", default=None, help="the 'own' tokenizer without --run (default: the run's)")
  p.add_argument("--qwen3-dir", default=None, help="where to keep the rebuilt Qwen3 tokenizer (default: a temp dir)")
  p.add_argument("--max-length", type=int, default=128, help="tokens per text (the tiny pipeline evaluates at 128)")
  p.add_argument("--max-queries", type=int, default=None, help="a deterministic sample of queries (default all)")
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--no-minilm", action="store_true")
  p.add_argument("--json", default=None)
  args = p.parse_args(argv)

  import tempfile

  from pplx_jax.core.config import load_config_file
  from pplx_jax.core.model_config import ModelConfig
  from pplx_jax.core.tokenizers import load_tokenizer, qwen3_tokenizer
  from pplx_jax.eval import baselines
  from pplx_jax.eval.metrics import as_relevant
  from pplx_jax.inference.embed import embed_texts
  from pplx_jax.models.encoder import create_model
  from pplx_jax.stages.contrastive.evalset import load_retrieval_set

  t0 = time.time()
  queries, docs, qrels = load_retrieval_set("manpages", max_queries=args.max_queries)
  rel = as_relevant(qrels, len(queries), len(docs))
  texts = queries + docs
  print(f"man pages: {len(queries)} queries, {len(docs)} documents ({time.time() - t0:.1f} s)", flush=True)

  run = Path(args.run) if args.run else None
  own_tok_dir = args.tokenizer or (str(run / "tokenizer") if run else None)
  if run is not None:
    from pplx_jax.convert.load import load_model
    _, model_cfg, _ = load_model(str(run / "export" / "hf"))
  else:
    model_cfg = ModelConfig.from_dict(load_config_file(args.model_config))
  model_cfg = model_cfg.replace(remat="none", compute_dtype="float32")
  qwen_dir = Path(args.qwen3_dir) if args.qwen3_dir else Path(tempfile.mkdtemp(prefix="qwen3-tok-")) / "tokenizer"
  qwen = qwen3_tokenizer(qwen_dir)
  toks = {"qwen3": qwen}
  if own_tok_dir:
    toks["own"] = load_tokenizer(own_tok_dir)

  results: dict[str, dict] = {}
  frag = {name: round(tokens_per_word(t, texts), 3) for name, t in toks.items()}
  print("tokens per word:", frag, flush=True)

  def row(name, emb):
    results[name] = score(emb[:len(queries)], emb[len(queries):], rel)
    r = results[name]
    print(f"  {name:<34} nDCG@10 {r['ndcg@10']:.4f}  R@100 {r['recall@100']:.4f}  mean cos {r['mean_cos']:.3f}  "
          f"top PC {r['top_pc']:.3f}", flush=True)

  if run is not None:
    for stage in STAGES:
      if (run / stage).is_dir():
        row(f"run: {stage}", embed_texts(str(run / stage), texts, batch_size=args.batch_size,
                                         max_length=args.max_length))
    row("run: export/hf", embed_texts(str(run / "export" / "hf"), texts, batch_size=args.batch_size,
                                      max_length=args.max_length))
  for path in args.model:
    row(f"model: {path}", embed_texts(path, texts, batch_size=args.batch_size, max_length=args.max_length))
  for name, tok in toks.items():
    cfg = model_cfg.replace(vocab_size=QWEN3_VOCAB if name == "qwen3" else tok.vocab_size)
    if name == "own" and run is not None:
      cfg = model_cfg
    for seed in range(args.seeds):
      row(f"random init, {name} tokenizer, seed {seed}",
          embed_in_memory(create_model(cfg, seed), tok, texts, args.max_length, args.batch_size))
  bm25 = baselines.bm25_scores(queries, docs)
  from pplx_jax.eval.metrics import metrics_from_ranks, relevant_ranks
  m = metrics_from_ranks(relevant_ranks(bm25, rel), (10, 100))
  results["BM25"] = {"ndcg@10": m["ndcg@10"], "recall@100": m["recall@100"]}
  print(f"  {'BM25':<34} nDCG@10 {m['ndcg@10']:.4f}  R@100 {m['recall@100']:.4f}", flush=True)
  if not args.no_minilm:
    row("all-MiniLM-L6-v2", baselines.sentence_transformer_embeddings(baselines.minilm_path(), texts))

  summary = {}
  for name in (toks if args.seeds else ()):
    vals = np.array([results[f"random init, {name} tokenizer, seed {s}"]["ndcg@10"] for s in range(args.seeds)])
    summary[f"random init, {name} tokenizer"] = {"mean": float(vals.mean()), "sd": float(vals.std(ddof=1))
                                                 if len(vals) > 1 else 0.0, "n": int(len(vals))}
  print("\n| model | nDCG@10 | Recall@100 | mean doc cosine | top-PC share |\n|---|---|---|---|---|")
  for name, r in results.items():
    if name.startswith("random init"):
      continue
    extra = (f"{r['mean_cos']:.3f} | {r['top_pc']:.3f}" if "mean_cos" in r else "- | -")
    print(f"| {name} | {r['ndcg@10']:.4f} | {r['recall@100']:.4f} | {extra} |")
  for name, s in summary.items():
    rows = [results[f"{name}, seed {i}"] for i in range(s["n"])]
    print(f"| {name} ({s['n']} seeds) | {s['mean']:.4f} ± {s['sd']:.4f} | "
          f"{np.mean([r['recall@100'] for r in rows]):.4f} | {np.mean([r['mean_cos'] for r in rows]):.3f} | "
          f"{np.mean([r['top_pc'] for r in rows]):.3f} |")
  print(f"\ntokens per word: {frag}; {time.time() - t0:.0f} s")
  if args.json:
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"num_queries": len(queries), "num_docs": len(docs),
                                           "max_length": args.max_length, "run": str(run) if run else None,
                                           "tokens_per_word": frag, "results": results,
                                           "random_init": summary}, indent=2) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
