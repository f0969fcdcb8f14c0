"""`pplx-jax` command line: one subcommand per job; heavy imports happen inside each command."""

from __future__ import annotations

import argparse
import sys


def _init_model(args) -> int:
  """Create a randomly initialised model from a config (for from-scratch work and the quickstart)."""
  import ml_collections

  from pplx_jax import checkpoint as ckpt
  from pplx_jax import config as config_lib
  from pplx_jax.models import qwen3
  from pplx_jax.models.config import ModelConfig
  from pplx_jax.tokenizers import load_tokenizer

  cfg = config_lib.load_config(args.config, args.overrides)
  model_dict = cfg.model if "model" in cfg else cfg
  model_cfg = ModelConfig.from_dict(model_dict)
  tok = load_tokenizer(args.tokenizer)
  if tok.vocab_size > model_cfg.vocab_size:
    raise SystemExit(f"error: tokenizer {args.tokenizer} has {tok.vocab_size} ids but model.vocab_size is "
                     f"{model_cfg.vocab_size}; set --config.vocab_size={tok.vocab_size} or larger")
  from pplx_jax.convert.convert import staged_output
  with staged_output(args.workdir) as tmp:
    model = qwen3.create_model(model_cfg, seed=args.seed)
    ckpt.save(tmp, 0, ckpt.params_to_numpy(qwen3.params_of(model)), model_cfg, extra={"init_seed": args.seed})
    tok.save(tmp / ckpt.TOKENIZER)
    run_cfg = ml_collections.ConfigDict({"model": model_cfg.to_dict(), "seed": args.seed})
    config_lib.save_config(run_cfg, tmp)
  n = model_cfg.num_params()
  print(f"wrote {args.workdir}: {n / 1e6:.2f}M parameters, vocab {model_cfg.vocab_size}, "
        f"tokenizer {tok.kind} ({tok.vocab_size} ids)")
  return 0


def _tokenizer(args) -> int:
  from pplx_jax import tokenizers
  return tokenizers.run_train(args)


def _convert(args) -> int:
  from pplx_jax.convert import convert
  return convert.run(args)


def _embed(args) -> int:
  from pplx_jax import embed
  return embed.run(args)


def _train(args) -> int:
  from pplx_jax import distributed
  distributed.initialize_from_args(args)  # before anything starts a JAX backend
  from pplx_jax import config as config_lib
  from pplx_jax.train import stages
  cfg = config_lib.load_config(args.config, args.overrides)
  result = stages.run_stage(cfg, args.workdir)
  print(f"[train] finished at step {result.step}; checkpoints in {result.workdir / 'checkpoints'}")
  return 0


def _prepare(args) -> int:
  from pplx_jax.data import builders
  return builders.run_prepare(args)


def _merge(args) -> int:
  from pplx_jax.convert import merge
  return merge.run_merge(args)


def _eval(args) -> int:
  from pplx_jax.eval import retrieval
  return retrieval.run_eval(args)


def _pipeline(args) -> int:
  from pplx_jax import distributed
  distributed.initialize_from_args(args)  # every process of a pod runs the pipeline; process 0 also evaluates
  from pplx_jax import pipeline
  return pipeline.run(args)


def _aot(args) -> int:
  from pplx_jax import aot
  return aot.run(args)


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="pplx-jax", description="pplx-embed training recipe in JAX/Flax")
  sub = p.add_subparsers(dest="command", required=True)

  s = sub.add_parser("init", help="create a randomly initialised model checkpoint from a config")
  s.add_argument("--config", required=True, help="a model config (configs/model/*.py) or a run config")
  s.add_argument("--tokenizer", required=True, help="tokenizer folder (tokenizer.json or tokenizer.model)")
  s.add_argument("--workdir", required=True, help="output workdir (must not exist or be empty)")
  s.add_argument("--seed", type=int, default=0)
  s.set_defaults(fn=_init_model)

  s = sub.add_parser("tokenizer", help="tokenizer tools")
  tsub = s.add_subparsers(dest="tokenizer_command", required=True)
  t = tsub.add_parser("train", help="train a SentencePiece or byte-level BPE tokenizer on text files")
  from pplx_jax.tokenizers import add_train_args
  add_train_args(t)
  t.set_defaults(fn=_tokenizer)

  s = sub.add_parser("convert", help="convert between Hugging Face, pplx-jax and sentence-transformers")
  from pplx_jax.convert.convert import add_args as convert_args
  convert_args(s)
  s.set_defaults(fn=_convert)

  s = sub.add_parser("embed", help="embed texts with a model")
  from pplx_jax.embed import add_args as embed_args
  embed_args(s)
  s.set_defaults(fn=_embed)

  s = sub.add_parser("train", help="train a stage (resumes from the newest checkpoint in --workdir)")
  s.add_argument("--config", required=True, help="configs/<stage>/<name>.py[:arg]")
  s.add_argument("--workdir", required=True)
  from pplx_jax.distributed import add_args as distributed_args
  distributed_args(s)
  s.set_defaults(fn=_train)

  s = sub.add_parser("prepare", help="turn text files (or WordNet) into a TFDS ArrayRecord dataset")
  from pplx_jax.data.builders import add_prepare_args
  add_prepare_args(s)
  s.set_defaults(fn=_prepare)

  s = sub.add_parser("merge", help="SLERP two checkpoints per tensor (the paper's final merge)")
  from pplx_jax.convert.merge import add_merge_args
  add_merge_args(s)
  s.set_defaults(fn=_merge)

  s = sub.add_parser("eval", help="retrieval metrics (nDCG@10, Recall@k, MRR) for float32 / int8 / binary")
  from pplx_jax.eval.retrieval import add_eval_args
  add_eval_args(s)
  s.set_defaults(fn=_eval)

  s = sub.add_parser("aot", help="compile a stage's train step for a TPU topology on this machine: HBM, FLOPs, fit")
  from pplx_jax.aot import add_args as aot_args
  aot_args(s)
  s.set_defaults(fn=_aot)

  s = sub.add_parser("pipeline", help="the whole recipe from one config: stages, merge, export, eval, report "
                    "(README's main command: configs/pipeline/tiny.py)")
  from pplx_jax.pipeline import add_args as pipeline_args
  pipeline_args(s)
  distributed_args(s)
  s.set_defaults(fn=_pipeline)
  return p


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  # `--config.a.b=value` overrides are collected separately so argparse never sees them.
  overrides = [a for a in argv if a.startswith("--config.")]
  argv = [a for a in argv if not a.startswith("--config.")]
  args = build_parser().parse_args(argv)
  args.overrides = overrides
  from pplx_jax.errors import USER_ERRORS
  try:
    return int(args.fn(args) or 0)
  except USER_ERRORS as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
