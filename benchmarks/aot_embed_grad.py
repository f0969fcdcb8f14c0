#!/usr/bin/env python
"""Issue 16.5b's AOT cell before/after in one command: the 0.6B contrastive step on v5p-64 compiled with the plain
embedding lookup (the FSDP table all-gathered, then `jnp.take`, whose transpose scatters into an unsharded [V, D]
buffer) and with the library's `models.encoder.embed_lookup` (ids gathered, a lookup in each chip's own columns and
one all-to-all; its transpose scatters into the chip's own slice), everything else equal.

    .venv/bin/python benchmarks/aot_embed_grad.py [--config configs/contrastive/qwen3_0_6b.py:v5p-64]
        [--topology v5p-64] [--remat full] [--compute-dtypes bfloat16] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--config", default="configs/contrastive/qwen3_0_6b.py:v5p-64")
  ap.add_argument("--topology", default="v5p-64")
  ap.add_argument("--remat", default="full")
  ap.add_argument("--budget-gib", type=float, default=80.0)
  ap.add_argument("--compute-dtypes", default="bfloat16", help="comma list: one before/after pair per dtype")
  ap.add_argument("--lookups", default="before,after", help="which of the two to compile")
  ap.add_argument("--json", default="")
  args = ap.parse_args(argv)
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  sys.path.insert(0, str(ROOT))
  import jax.numpy as jnp

  from pplx_jax.core import config as config_lib
  from pplx_jax.core.sharding import constrain
  from pplx_jax.models import encoder
  from pplx_jax.stages import aot

  library_lookup = encoder.embed_lookup
  lookups = {"before": ("plain jnp.take (before)", lambda t, i: jnp.take(constrain(t, ("vocab", None)), i, axis=0)),
             "after": ("encoder.embed_lookup (after)", library_lookup)}
  rows = []
  for dtype in args.compute_dtypes.split(","):
    for name, lookup in (lookups[k] for k in args.lookups.split(",")):
      encoder.embed_lookup = lookup  # the model calls it through the module, so this swaps it for this compile
      cfg = config_lib.load_config(args.config, [f"--config.model.remat={args.remat}",
                                                 f"--config.model.compute_dtype={dtype}"])
      r = aot.compile_stage(cfg, args.topology, budget_gib=args.budget_gib, config_name=args.config)
      rows.append(dict(lookup=name, compute_dtype=dtype, **dataclasses.asdict(r)))
      print(f"{name:<30} {dtype:<9} total {r.total_gib:6.2f} GiB  arguments {r.argument_gib:5.2f}  temporaries "
            f"{r.temp_gib:6.2f}  XLA {r.xla_seconds * 1e3 if r.xla_seconds else float('nan'):.2f} ms  "
            f"compile {r.compile_s:.0f} s", flush=True)
  encoder.embed_lookup = library_lookup
  if args.json:
    Path(args.json).write_text(json.dumps(rows, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
