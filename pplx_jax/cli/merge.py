"""`pplx-jax merge A B --t 0.5 --out DIR`: the paper's final SLERP merge of two checkpoints, tensor by tensor."""

from __future__ import annotations

import json

HELP = "SLERP two checkpoints per tensor (the paper's final merge)"
DOT_THRESHOLD = 0.9995  # convert.merge.DOT_THRESHOLD (mergekit's), named here so `--help` needs no NumPy


def add_args(p) -> None:
  p.add_argument("a", help="model at t=0 (Hugging Face folder, pplx-jax checkpoint step or workdir)")
  p.add_argument("b", help="model at t=1 (same kinds of path)")
  p.add_argument("--t", type=float, default=0.5, help="interpolation weight in [0, 1] (default 0.5)")
  p.add_argument("--out", required=True, help="output workdir (must not exist or be empty)")
  p.add_argument("--dot-threshold", type=float, default=DOT_THRESHOLD,
                 help="use linear interpolation for tensors with |cos angle| above this (mergekit: 0.9995)")


def run(args) -> int:
  from pplx_jax.convert.merge import merge_checkpoints

  out = merge_checkpoints(args.a, args.b, args.t, args.out, dot_threshold=args.dot_threshold)
  record = json.loads((out / "config.json").read_text())["merge"]  # out: a local or gs:// path
  print(f"wrote {out}: SLERP t={record['t']} of {args.a} (t=0) and {args.b} (t=1); {record['tensors']} tensors, "
        f"{len(record['lerp_tensors'])} nearly parallel (linear interpolation)")
  return 0
