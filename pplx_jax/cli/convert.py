"""`pplx-jax convert SRC DST --to jax|hf|st`: between Hugging Face folders, pplx-jax checkpoints and
sentence-transformers folders (`pplx_jax.convert.formats`)."""

from __future__ import annotations

HELP = "convert between Hugging Face, pplx-jax and sentence-transformers"


def add_args(p) -> None:
  p.add_argument("src", help="Hugging Face folder, pplx-jax checkpoint step directory, or pplx-jax workdir")
  p.add_argument("dst", help="output directory (must not exist or be empty)")
  p.add_argument("--to", required=True, choices=("jax", "hf", "st"))
  p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                 help="weights dtype of an hf/st export (default: the dtype the weights were imported in)")
  p.add_argument("--max-shard-size", default="5GB", help="shard safetensors above this size (e.g. 500MB)")
  p.add_argument("--max-seq-length", type=int, default=512, help="sentence-transformers truncation length")


def run(args) -> int:
  from pplx_jax.convert import formats

  if args.to == "jax":
    out = formats.to_jax(args.src, args.dst)
  elif args.to == "hf":
    out = formats.to_hf(args.src, args.dst, args.dtype, formats.parse_size(args.max_shard_size))
  else:
    out = formats.to_st(args.src, args.dst, args.dtype, formats.parse_size(args.max_shard_size), args.max_seq_length)
  print(f"wrote {out} ({args.to})")
  return 0
