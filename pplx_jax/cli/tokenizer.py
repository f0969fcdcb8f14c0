"""`pplx-jax tokenizer train`: a SentencePiece or Qwen-style byte-level BPE tokenizer from text files."""

from __future__ import annotations

HELP = "tokenizer tools"


def add_args(p) -> None:
  sub = p.add_subparsers(dest="tokenizer_command", required=True)
  t = sub.add_parser("train", help="train a SentencePiece or byte-level BPE tokenizer on text files")
  t.add_argument("--kind", choices=("sentencepiece", "bpe"), required=True,
                 help="sentencepiece, or bpe for a Qwen-style byte-level BPE (HF tokenizers)")
  t.add_argument("--input", nargs="+", action="extend", required=True, metavar="FILE_OR_GLOB",
                 help="text files (one document per line) or .jsonl files with a 'text' field")
  t.add_argument("--vocab-size", type=int, required=True)
  t.add_argument("--out", required=True, help="output directory")
  t.add_argument("--model-type", choices=("bpe", "unigram"), default=None,
                 help="SentencePiece model type (default bpe); only for --kind sentencepiece")


def _train(args, out):
  from pplx_jax.core.errors import UserError
  from pplx_jax.core.tokenizers import train_byte_level_bpe, train_sentencepiece

  if args.kind == "sentencepiece":
    return train_sentencepiece(args.input, out, args.vocab_size, model_type=args.model_type or "bpe")
  if args.model_type not in (None, "bpe"):
    raise UserError("--model-type applies to --kind sentencepiece only")
  return train_byte_level_bpe(args.input, out, args.vocab_size)


def run(args) -> int:
  from pplx_jax.core import paths

  if paths.is_url(args.out):  # the trainers write local files: a bucket folder is uploaded when complete
    with paths.staged_output(args.out) as tmp:
      tok = _train(args, tmp)
  else:
    tok = _train(args, args.out)
  out = paths.as_path(args.out)
  for name in sorted(p.name for p in out.iterdir()):
    print(f"wrote {out / name}")
  print(f"{tok.kind} tokenizer: vocab size {tok.vocab_size}, pad id {tok.pad_id}, "
        f"eos id {tok.eos_id}, mask id {tok.mask_id}")
  return 0
