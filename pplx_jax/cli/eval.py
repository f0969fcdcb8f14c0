"""`pplx-jax eval`: held-out retrieval metrics of one model (nDCG@k, Recall@k, MRR) for float32 / int8 / binary
embeddings and Matryoshka prefixes; `--contextual` runs the ConTEB protocol (late chunking vs each chunk alone)."""

from __future__ import annotations

import argparse
import json
import time

HELP = "retrieval metrics (nDCG@10, Recall@k, MRR) for float32 / int8 / binary"
DTYPES = ("float32", "int8", "binary")  # eval.metrics.DTYPES, named here so `--help` needs no NumPy
# A bad split, sample size or data file: one line, exit 2.
USER_ERRORS = (ValueError,)


def add_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--model", required=True, help="pplx-jax workdir / checkpoint step, or a Hugging Face / "
                 "sentence-transformers folder")
  p.add_argument("--data", default="wordnet",
                 help="'wordnet' (held-out WordNet synsets: lemma/example -> definition), a prepared pairs dataset "
                      "(pplx_jax.stages.contrastive.prepare), or a .jsonl/.parquet file of query/positive records")
  p.add_argument("--split", default="validation", help="split of the dataset (WordNet: train or validation)")
  p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
  p.add_argument("--dims", nargs="+", default=["full"],
                 help="Matryoshka prefixes to evaluate, e.g. 64 128 full (default: full)")
  p.add_argument("--ks", nargs="+", type=int, default=[1, 10, 100], help="cut-offs k (default 1 10 100)")
  p.add_argument("--max-queries", type=int, default=None, help="evaluate a deterministic sample of N queries")
  p.add_argument("--max-docs", type=int, default=None,
                 help="keep the sampled queries' relevant docs plus a deterministic sample of the others, up "
                      "to N docs in all (default: the whole corpus of the split)")
  p.add_argument("--sample-seed", type=int, default=0, help="seed of the --max-queries/--max-docs samples")
  p.add_argument("--validation-fraction", type=float, default=0.05,
                 help="WordNet: validation fraction of the synset split (as in `prepare --wordnet`)")
  p.add_argument("--seed", type=int, default=0, help="WordNet: seed of the synset split")
  p.add_argument("--kinds", nargs="+", default=["lemma", "example"], choices=("lemma", "example"),
                 help="WordNet: query kinds")
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--max-length", type=int, default=512)
  p.add_argument("--compute-dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--json", default=None, help="also write the results (and the setup) to this JSON file")
  p.add_argument("--contextual", action="store_true",
                 help="ConTEB protocol on contextual documents (--data: 'wordnet' = the WordNet contextual set, a "
                      "prepared contextual dataset (pplx_jax.stages.contextual.prepare), or a .jsonl/.parquet of "
                      "{doc_id, chunks, queries}): every query against every chunk, late chunking vs each chunk alone")


def run_contextual_eval(args: argparse.Namespace) -> int:
  """`pplx-jax eval --contextual`: contextual (late chunking) vs non-contextual nDCG@10 of one model."""
  from pplx_jax.eval import contextual
  from pplx_jax.eval.metrics import dim_label, normalise_dims
  from pplx_jax.stages.contextual import evalset

  t0 = time.perf_counter()
  dims = normalise_dims(args.dims)
  kw = dict(max_docs=args.max_docs, max_queries=args.max_queries, sample_seed=args.sample_seed)
  if args.data == "wordnet":
    kw.update(validation_fraction=args.validation_fraction, seed=args.seed)
  queries, docs, qrels = evalset.load_retrieval_set(args.data, args.split, **kw)
  t1 = time.perf_counter()
  results = contextual.evaluate_model(args.model, queries, docs, qrels, args.dtypes, dims, args.ks,
                                      batch_size=args.batch_size, max_length=args.max_length,
                                      compute_dtype=args.compute_dtype)
  t2 = time.perf_counter()
  chunks = sum(len(d) for d in docs)
  print(f"{args.model} on {args.data} ({args.split}, contextual): {len(queries)} queries, {len(docs)} documents, "
        f"{chunks} chunks (data {t1 - t0:.1f} s, embedding + scoring {t2 - t1:.1f} s)\n")
  print(contextual.format_table(results))
  if args.json:
    report = {"model": str(args.model), "data": str(args.data), "split": args.split, "contextual": True,
              "num_queries": len(queries), "num_docs": len(docs), "num_chunks": chunks, "dtypes": list(args.dtypes),
              "dims": [dim_label(d) for d in dims], "ks": list(args.ks), "max_queries": args.max_queries,
              "max_docs": args.max_docs, "sample_seed": args.sample_seed, "seconds": round(t2 - t0, 3),
              "metrics": results}
    _write_json(args.json, report)
  return 0


def _write_json(path, report: dict) -> None:
  from pplx_jax.core import paths
  paths.write_text_atomic(path, json.dumps(report, indent=2) + "\n")  # local or gs://


def run(args: argparse.Namespace) -> int:
  if args.contextual:
    return run_contextual_eval(args)
  from pplx_jax.eval.metrics import dim_label, format_table, normalise_dims
  from pplx_jax.eval.retrieval import evaluate_model
  from pplx_jax.stages.contrastive import evalset as pair_evalset

  t0 = time.perf_counter()
  dims = normalise_dims(args.dims)
  queries, docs, qrels = pair_evalset.load_retrieval_set(args.data, args.split, max_queries=args.max_queries,
                                       max_docs=args.max_docs, sample_seed=args.sample_seed,
                                       validation_fraction=args.validation_fraction, seed=args.seed,
                                       kinds=args.kinds)
  t1 = time.perf_counter()
  results = evaluate_model(args.model, queries, docs, qrels, args.dtypes, dims, args.ks,
                           batch_size=args.batch_size, max_length=args.max_length,
                           compute_dtype=args.compute_dtype, progress=True)
  t2 = time.perf_counter()
  print(f"{args.model} on {args.data} ({args.split}): {len(queries)} queries, {len(docs)} documents "
        f"(data {t1 - t0:.1f} s, embedding + scoring {t2 - t1:.1f} s)\n")
  print(format_table(results))
  if args.json:
    report = {"model": str(args.model), "data": str(args.data), "split": args.split,
              "num_queries": len(queries), "num_docs": len(docs), "dtypes": list(args.dtypes),
              "dims": [dim_label(d) for d in dims], "ks": list(args.ks), "max_queries": args.max_queries,
              "max_docs": args.max_docs, "sample_seed": args.sample_seed, "seconds": round(t2 - t0, 3),
              "metrics": results}
    _write_json(args.json, report)
  return 0
