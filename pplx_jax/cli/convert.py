"""`pplx-jax convert SRC DST --to jax|hf|st|pplx|onnx`: between Hugging Face folders, pplx-jax checkpoints,
sentence-transformers folders (`pplx_jax.convert.formats`), the released pplx-embed layout (`convert.pplx`) and a
self-contained ONNX model (`convert.onnx`)."""

from __future__ import annotations

HELP = "convert between Hugging Face, pplx-jax and sentence-transformers"


def add_args(p) -> None:
  p.add_argument("src", help="Hugging Face folder, pplx-jax checkpoint step directory, or pplx-jax workdir")
  p.add_argument("dst", help="output directory (must not exist or be empty)")
  p.add_argument("--to", required=True, choices=("jax", "hf", "st", "pplx", "onnx"))
  p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                 help="weights dtype of an hf/st export (default: the dtype the weights were imported in)")
  p.add_argument("--max-shard-size", default="5GB", help="shard safetensors above this size (e.g. 500MB)")
  p.add_argument("--max-seq-length", type=int, default=512, help="sentence-transformers truncation length (st); "
                 "tokenizer model_max_length where the tokenizer sets none (onnx)")
  p.add_argument("--variant", default=None, choices=("dense", "contextual"),
                 help="pplx: pplx-embed-v1 (dense) or pplx-embed-context-v1 remote code (default: the source's own)")
  p.add_argument("--with-onnx", action="store_true", help="pplx: also write onnx/model.onnx")


def run(args) -> int:
  from pplx_jax.convert import formats

  if args.to == "jax":
    out = formats.to_jax(args.src, args.dst)
  elif args.to == "hf":
    out = formats.to_hf(args.src, args.dst, args.dtype, formats.parse_size(args.max_shard_size))
  elif args.to == "st":
    out = formats.to_st(args.src, args.dst, args.dtype, formats.parse_size(args.max_shard_size), args.max_seq_length)
  elif args.to == "pplx":
    from pplx_jax.convert import pplx
    out = pplx.to_pplx(args.src, args.dst, args.dtype, args.variant, formats.parse_size(args.max_shard_size),
                       args.with_onnx)
  else:
    out = formats.to_onnx(args.src, args.dst, args.max_seq_length)
  print(f"wrote {out} ({args.to})")
  return 0
