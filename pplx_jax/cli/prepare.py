"""`pplx-jax prepare`: text files, contextual documents or WordNet -> a TFDS ArrayRecord dataset (train and
validation splits) that the stages read."""

from __future__ import annotations

import argparse
import time

HELP = "turn text files (or WordNet) into a TFDS ArrayRecord dataset"
# A bad record, a bad fraction or name, or an existing different dataset: one line, exit 2.
USER_ERRORS = (ValueError,)


def add_args(parser: argparse.ArgumentParser) -> None:
  src = parser.add_mutually_exclusive_group(required=True)
  src.add_argument("--input", nargs="+", action="extend", metavar="FILE_OR_GLOB",
                   help="text files: .txt (a document per line), .jsonl (--field), .parquet (--field column)")
  src.add_argument("--wordnet", action="store_true", help="the English WordNet glosses (apt-get install wordnet-base)")
  parser.add_argument("--out", required=True, help="data directory; the dataset goes to OUT/NAME/1.0.0")
  parser.add_argument("--name", default=None, help="dataset name (default: text, or wordnet)")
  parser.add_argument("--validation-fraction", type=float, default=None,
                      help="fraction of records for the validation split (default 0.01; WordNet 0.05)")
  parser.add_argument("--seed", type=int, default=0, help="seed of the train/validation assignment")
  parser.add_argument("--skip-bad-records", action="store_true",
                      help="skip and count bad records instead of stopping at the first one")
  parser.add_argument("--field", default="text", help="JSON field / parquet column holding the text")
  parser.add_argument("--contextual", action="store_true",
                      help="contextual documents {doc_id, chunks, queries: [{text, chunk}]} from .jsonl/.parquet "
                           "(--input), or the WordNet contextual set (--wordnet); see "
                           "pplx_jax.stages.contextual.prepare")
  parser.add_argument("--limit", type=int, default=None, help=argparse.SUPPRESS)  # WordNet subset for tests


def run(args: argparse.Namespace) -> int:
  from pplx_jax.data.prepared import SPLITS, dataset_metadata, split_sizes
  from pplx_jax.stages.pretrain.prepare import prepare_text_dataset, prepare_wordnet

  t0 = time.perf_counter()
  if getattr(args, "contextual", False):
    from pplx_jax.stages.contextual import prepare as ctx_prepare
    if args.wordnet:
      path = ctx_prepare.prepare_wordnet_contextual(
          args.out, name=args.name or "wordnet_contextual", seed=args.seed, limit=args.limit,
          validation_fraction=0.05 if args.validation_fraction is None else args.validation_fraction)
    else:
      path = ctx_prepare.prepare_contextual(
          args.input, args.out, name=args.name or "contextual", seed=args.seed,
          validation_fraction=0.01 if args.validation_fraction is None else args.validation_fraction,
          on_error="skip" if args.skip_bad_records else "raise")
  elif args.wordnet:
    path = prepare_wordnet(args.out, name=args.name or "wordnet", seed=args.seed, limit=args.limit,
                           validation_fraction=0.05 if args.validation_fraction is None else args.validation_fraction)
  else:
    path = prepare_text_dataset(
        args.input, args.out, name=args.name or "text", seed=args.seed, field=args.field,
        validation_fraction=0.01 if args.validation_fraction is None else args.validation_fraction,
        on_error="skip" if args.skip_bad_records else "raise")
  sizes = split_sizes(path)
  skipped = dataset_metadata(path).get("skipped") or {}
  print(f"dataset {path} ({time.perf_counter() - t0:.1f} s)")
  for split in SPLITS:
    print(f"  {split}: {sizes[split]} records" if split in sizes else f"  {split}: 0 records (split omitted)")
  if skipped:
    print(f"  skipped bad records: {sum(skipped.values())} ("
          + ", ".join(f"{r}: {n}" for r, n in skipped.items()) + ")")
  elif not args.wordnet:
    print("  skipped bad records: 0")
  return 0
