#!/usr/bin/env python
"""How much of the pretrained decoder survives a SmolLM2 pipeline run: its models evaluated in every attention +
pooling mode on the pipeline's own held-out set (the pipeline evaluates each model in its trained mode only).

    python benchmarks/smollm2_modes.py --run runs/smollm2 [--models pretrain pair] [--json out.json]

Rows: each model of the run (`RUN/<stage>`) as causal + last, causal + mean and bidirectional + mean, float32
nDCG@10 on the run's `eval` split and sizes. Reading it: zero-shot causal + mean against pretrain used causal + mean
says what the diffusion stage cost the decoder; pair used bidirectional + mean against pair used causal + mean says
whether the pair stage learned to use the bidirectional attention it was trained with.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODES = (("causal", "last"), ("causal", "mean"), ("bidirectional", "mean"))


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--run", required=True, help="a finished `pplx-jax pipeline --config configs/pipeline/smollm2.py` "
                                              "workdir")
  p.add_argument("--models", nargs="+", default=["pretrain", "pair"])
  p.add_argument("--json", default=None)
  args = p.parse_args()
  from pplx_jax.core import config as config_lib
  from pplx_jax.recipe import pipeline
  from pplx_jax.recipe.plan import Plan
  run = Path(args.run)
  plan = Plan(config_lib.from_json_file(run / "pipeline_config.json"), run)
  sets = pipeline._eval_sets(plan)
  rows = {}
  for name in args.models:
    for attention, pooling in MODES:
      res = pipeline.evaluate_model(plan, name, sets, pooling=pooling, attention=attention, contextual_eval=False)
      rows[f"{name} {attention}+{pooling}"] = res["retrieval"]["float32/full/ndcg@10"]
      print(f"{name:>10} {attention + '+' + pooling:>20}  nDCG@10 {rows[f'{name} {attention}+{pooling}']:.4f}",
            flush=True)
  if args.json:
    Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
