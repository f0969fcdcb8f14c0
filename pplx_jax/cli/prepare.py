"""`pplx-jax prepare`: text files, pairs/triplets, contextual documents or WordNet -> a TFDS ArrayRecord dataset
(train and validation splits) that the stages read; in this process, or on Apache Beam (`--beam-runner`)."""

from __future__ import annotations

import argparse
import time

HELP = ("turn text files, pairs, triplets, contextual documents (or WordNet, apt descriptions, stdlib docstrings) "
        "into a TFDS ArrayRecord dataset")
# A bad record, a bad fraction or name, or an existing different dataset: one line, exit 2.
USER_ERRORS = (ValueError,)


def add_args(parser: argparse.ArgumentParser) -> None:
  src = parser.add_mutually_exclusive_group(required=True)
  src.add_argument("--input", nargs="+", action="extend", metavar="FILE_OR_GLOB",
                   help="text files: .txt (a document per line), .jsonl (--field), .parquet (--field column); "
                        "local paths, or gs:// URLs with --beam-runner")
  src.add_argument("--wordnet", action="store_true", help="the English WordNet glosses (apt-get install wordnet-base)")
  src.add_argument("--apt", action="store_true",
                   help="Debian package descriptions from /var/lib/dpkg/status and apt's lists (short -> long, "
                        "name -> short with --pairs; same-Section hard negatives with --triplets)")
  src.add_argument("--pydoc", action="store_true",
                   help="docstrings of the installed Python standard library (summary -> code / rest of the "
                        "docstring with --pairs; same-module hard negatives with --triplets)")
  kind = parser.add_mutually_exclusive_group()
  kind.add_argument("--pairs", action="store_true",
                    help="query/positive pairs {query, positive} from .jsonl/.parquet (--input), or WordNet's "
                         "lemma/example -> definition pairs (--wordnet); see pplx_jax.stages.contrastive.prepare")
  kind.add_argument("--triplets", action="store_true",
                    help="triplets {query, positive, negatives: [...]} from .jsonl/.parquet (--input), or WordNet's "
                         "co-hyponym hard negatives (--wordnet)")
  kind.add_argument("--contextual", action="store_true",
                    help="contextual documents {doc_id, chunks, queries: [{text, chunk}]} from .jsonl/.parquet "
                         "(--input), or the WordNet contextual set (--wordnet); see "
                         "pplx_jax.stages.contextual.prepare")
  parser.add_argument("--out", required=True, help="data directory; the dataset goes to OUT/NAME/1.0.0")
  parser.add_argument("--name", default=None,
                      help="dataset name (default: text, pairs, triplets, contextual, or wordnet[_pairs|_triplets|"
                           "_contextual])")
  parser.add_argument("--validation-fraction", type=float, default=None,
                      help="fraction of records for the validation split (default 0.01; WordNet 0.05)")
  parser.add_argument("--seed", type=int, default=0, help="seed of the train/validation assignment")
  parser.add_argument("--skip-bad-records", action="store_true",
                      help="skip and count bad records instead of stopping at the first one")
  parser.add_argument("--field", default="text", help="JSON field / parquet column holding the text")
  parser.add_argument("--query-field", default="query", help="--pairs/--triplets: the query's field")
  parser.add_argument("--positive-field", default="positive", help="--pairs/--triplets: the positive's field")
  parser.add_argument("--negatives-field", default="negatives", help="--triplets: the negatives' field (a list)")
  beam = parser.add_argument_group("Apache Beam (the `pods` extra; README: data preparation at scale)")
  beam.add_argument("--beam-runner", default=None, metavar="RUNNER",
                    help="prepare on Beam with this runner: DirectRunner, DataflowRunner, FlinkRunner, SparkRunner, "
                         "PortableRunner (default: in this process)")
  beam.add_argument("--beam-options", default="", metavar="FLAGS",
                    help="Beam pipeline flags as one string, given with '=' as it starts with '--': "
                         "--beam-options=\"--direct_num_workers=4 --direct_running_mode=multi_processing\", or "
                         "Dataflow's --project/--region/--temp_location/...")
  parser.add_argument("--limit", type=int, default=None, help=argparse.SUPPRESS)  # WordNet subset for tests


def _kind(args: argparse.Namespace) -> str:
  kind = "pair" if args.pairs else "triplet" if args.triplets else "contextual" if args.contextual else "text"
  if args.wordnet:
    return {"text": "wordnet", "pair": "wordnet_pairs", "triplet": "wordnet_triplets",
            "contextual": "wordnet_contextual"}[kind]
  return kind


def _local(args: argparse.Namespace) -> str | None:
  return "apt" if getattr(args, "apt", False) else "pydoc" if getattr(args, "pydoc", False) else None


def _fraction(args: argparse.Namespace) -> float:
  builtin = args.wordnet or _local(args) is not None
  return (0.05 if builtin else 0.01) if args.validation_fraction is None else args.validation_fraction


def _prepare_local(source: str, args: argparse.Namespace):
  """--apt / --pydoc: the local corpus's text, pairs or triplets (split by key like WordNet's by synset)."""
  on_error = "skip" if args.skip_bad_records else "raise"
  if args.contextual:
    raise ValueError(f"--{source} has no contextual documents (use --wordnet --contextual or --input)")
  if args.pairs or args.triplets:
    from pplx_jax.stages.contrastive.prepare import prepare_local_pairs
    return prepare_local_pairs(args.out, source, _fraction(args), args.seed, args.limit,
                               kind="triplet" if args.triplets else "pair", name=args.name, on_error=on_error)
  from pplx_jax.stages.pretrain.prepare import prepare_local_text
  return prepare_local_text(args.out, [source], _fraction(args), args.seed, args.limit, name=args.name,
                            on_error=on_error)


def _prepare_pairs(kind: str, args: argparse.Namespace):
  from pplx_jax.stages.contrastive import prepare as pair_prepare
  if kind == "wordnet_pairs":
    return pair_prepare.prepare_wordnet_pairs(args.out, name=args.name or "wordnet_pairs", seed=args.seed,
                                              limit=args.limit, validation_fraction=_fraction(args))
  if kind == "wordnet_triplets":
    return pair_prepare.prepare_wordnet_triplets(args.out, seed=args.seed, limit=args.limit,
                                                 validation_fraction=_fraction(args))
  return pair_prepare.prepare_pairs(args.input, args.out, kind=kind, name=args.name, seed=args.seed,
                                    validation_fraction=_fraction(args),
                                    on_error="skip" if args.skip_bad_records else "raise",
                                    query_field=args.query_field, positive_field=args.positive_field,
                                    negatives_field=args.negatives_field)


def _prepare_on_beam(kind: str, args: argparse.Namespace) -> str:
  from pplx_jax.stages.beam_prepare import BeamSettings, prepare_on_beam
  return prepare_on_beam(kind, args.input, args.out, args.name, validation_fraction=_fraction(args), seed=args.seed,
                         on_error="skip" if args.skip_bad_records else "raise", field=args.field,
                         query_field=args.query_field, positive_field=args.positive_field,
                         negatives_field=args.negatives_field, limit=args.limit,
                         settings=BeamSettings(args.beam_runner, args.beam_options))


def run(args: argparse.Namespace) -> int:
  from pplx_jax.data.prepared import SPLITS, dataset_metadata, split_sizes
  from pplx_jax.stages.pretrain.prepare import prepare_text_dataset, prepare_wordnet

  kind = _kind(args)
  if kind == "wordnet_triplets" and args.name not in (None, "wordnet_triplets"):
    raise ValueError("the WordNet triplets dataset is always named wordnet_triplets (drop --name)")
  t0 = time.perf_counter()
  if _local(args) is not None:
    if args.beam_runner:
      raise ValueError(f"--{_local(args)} is prepared in this process (it is small); drop --beam-runner")
    path = _prepare_local(_local(args), args)
  elif args.beam_runner:
    path = _prepare_on_beam(kind, args)
  elif kind in ("pair", "triplet", "wordnet_pairs", "wordnet_triplets"):
    path = _prepare_pairs(kind, args)
  elif getattr(args, "contextual", False):
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
  if args.beam_runner:  # the output may be a gs:// URL
    from pplx_jax.data.beam import dataset_counts
    sizes, skipped = dataset_counts(path)
  else:
    sizes = split_sizes(path)
    skipped = dataset_metadata(path).get("skipped") or {}
  print(f"dataset {path} ({time.perf_counter() - t0:.1f} s)")
  for split in SPLITS:
    print(f"  {split}: {sizes[split]} records" if split in sizes else f"  {split}: 0 records (split omitted)")
  if skipped:
    print(f"  skipped bad records: {sum(skipped.values())} ("
          + ", ".join(f"{r}: {n}" for r, n in skipped.items()) + ")")
  elif not args.wordnet and _local(args) is None:
    print("  skipped bad records: 0")
  return 0
