"""`pplx-jax embed`: texts (or, with --contextual, documents of chunks) -> an .npy of embeddings in input order."""

from __future__ import annotations

HELP = "embed texts with a model"
DTYPES = ("float32", "int8", "binary", "ubinary", "sign")  # models.quantize.EMBEDDING_DTYPES (no NumPy for --help)


def add_args(p) -> None:
  p.add_argument("--model", required=True, help="pplx-jax workdir / checkpoint step, or a Hugging Face / "
                 "sentence-transformers folder")
  p.add_argument("--input", required=True, help=".txt (one text a line) or .jsonl (field `text`); with "
                 "--contextual a .jsonl of documents {\"doc_id\": ..., \"chunks\": [...]}")
  p.add_argument("--output", required=True, help="output .npy")
  p.add_argument("--dtype", default="float32", choices=DTYPES,
                 help="int8: round(127 tanh x); binary = ubinary: sign bits packed MSB first (uint8); sign: +-1 "
                      "int8 (the release's binary); see pplx_jax/convert/pplx.py for the mapping")
  p.add_argument("--dim", type=int, default=None, help="keep the first N dimensions (Matryoshka) before quantising")
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--max-length", type=int, default=512)
  p.add_argument("--compute-dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--contextual", action="store_true",
                 help="late chunking (pplx-embed-context): one row per chunk, each chunk embedded in one pass over "
                      "its document (windows of --max-length tokens for longer documents)")


def run(args) -> int:
  import numpy as np

  from pplx_jax.core import paths
  from pplx_jax.core.errors import UserError
  from pplx_jax.inference import contextual, embed

  if args.dim is not None and args.dim <= 0:
    raise UserError(f"--dim must be positive, got {args.dim}")
  if args.contextual:
    docs = contextual.read_documents(args.input)  # bad input fails before the model loads
    emb = contextual.embed_documents(args.model, docs, batch_size=args.batch_size, max_length=args.max_length,
                                     compute_dtype=args.compute_dtype)
    what = f"chunk rows of {len(docs)} documents"
  else:
    texts = embed.read_texts(args.input)
    emb = embed.embed_texts(args.model, texts, batch_size=args.batch_size, max_length=args.max_length,
                            compute_dtype=args.compute_dtype, progress=True)
    what = "rows"
  out = embed.finalize(emb, args.dtype, args.dim)
  dst = paths.as_path(args.output)  # local or gs://
  dst.parent.mkdir(parents=True, exist_ok=True)
  if paths.is_url(dst):
    with dst.open("wb") as f:
      np.save(f, out)
  else:
    np.save(args.output, out)  # (adds .npy to a name without it, as before)
  kind = f"{args.dtype}, late chunking" if args.contextual else args.dtype
  print(f"wrote {args.output}: {out.shape[0]} {what} x {out.shape[1]} ({out.dtype}, {kind})")
  return 0
