#!/usr/bin/env python
"""Does a bf16 (mixed-precision) stage-1 run track float32? Same init, same batches, same noise; held-out loss.

    python benchmarks/bf16_curve.py [--shape tiny|smollm2-cut] [--steps 200] [--tol 0.02]

Trains the library's masked-diffusion step (`diffusion.diffusion_loss`, the stage's optax chain) twice from one
initialisation: compute_dtype float32 and bfloat16 (float32 params and AdamW either way), on a learnable synthetic
corpus (a fixed random first-order Markov chain over the vocabulary, 4 likely successors per token), and reports the
held-out masked CE of both every `--eval-every` steps on fixed held-out batches with fixed masks (ratio 0.5). Exit 1
if the final held-out CEs differ by more than `--tol` (relative).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from pplx_jax.core.model_config import ModelConfig  # noqa: E402
from pplx_jax.models import encoder  # noqa: E402
from pplx_jax.objectives import diffusion  # noqa: E402
from pplx_jax.stages.optimizer import default_config, make_optimizer  # noqa: E402

SHAPES = {
    "tiny": dict(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=192,
                 batch=16, seq=64),
    # SmolLM2-135M's layer and vocabulary, cut to 2 layers (a 30-layer curve does not fit this machine's time)
    "smollm2-cut": dict(vocab_size=49_152, hidden_size=576, num_layers=2, num_heads=9, num_kv_heads=3, head_dim=64,
                        mlp_dim=1536, batch=8, seq=128),
}


def markov_corpus(vocab, n_rows, seq, seed):
  rs = np.random.RandomState(1234)  # the chain is fixed; `seed` picks the rows
  succ = rs.randint(0, vocab - 1, size=(vocab, 4))
  rr = np.random.RandomState(seed)
  rows = np.empty((n_rows, seq), np.int32)
  rows[:, 0] = rr.randint(0, vocab - 1, n_rows)
  for j in range(1, seq):
    rows[:, j] = succ[rows[:, j - 1], rr.randint(0, 4, n_rows)]
  return rows


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--shape", choices=tuple(SHAPES), default="tiny")
  ap.add_argument("--steps", type=int, default=200)
  ap.add_argument("--eval-every", type=int, default=50)
  ap.add_argument("--lr", type=float, default=3e-3)
  ap.add_argument("--tol", type=float, default=0.02)
  args = ap.parse_args()
  sh = dict(SHAPES[args.shape])
  b, s = sh.pop("batch"), sh.pop("seq")
  mask_id = sh["vocab_size"] - 1
  obj = diffusion.DiffusionConfig(mask_token_id=mask_id, random_length_prob=0.0, ce_chunk_size=1024)
  oc = default_config()
  oc.lr, oc.warmup_steps = args.lr, max(args.steps // 10, 1)
  train = markov_corpus(sh["vocab_size"], b * args.steps, s, seed=1).reshape(args.steps, b, s)
  held = markov_corpus(sh["vocab_size"], 4 * b, s, seed=2)
  seg = jnp.ones((b, s), jnp.int32)
  init = encoder.params_of(encoder.create_model(ModelConfig(**sh, compute_dtype="float32", remat="none"), seed=0))
  curves = {}
  for dtype in ("float32", "bfloat16"):
    cfg = ModelConfig(**sh, compute_dtype=dtype, remat="none")
    graphdef, state = nnx.split(encoder.model_from_params(cfg, init))
    params = nnx.to_pure_dict(state)
    tx, _ = make_optimizer(oc, args.steps)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, ids, i):
      loss_fn = lambda p: diffusion.diffusion_loss(nnx.merge(graphdef, nnx.State(p)),
                                                   {"input_ids": ids, "segment_ids": seg},
                                                   jax.random.fold_in(jax.random.key(0), i), obj)
      (loss, _), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
      updates, opt_state = tx.update(g, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def held_ce(params):
      model = nnx.merge(graphdef, nnx.State(params))
      ces = []
      for k in range(4):
        ids = jnp.asarray(held[k * b:(k + 1) * b])
        m = diffusion.eval_at_mask_ratios(model, {"input_ids": ids, "segment_ids": seg}, jax.random.key(100 + k),
                                          obj, ratios=(0.5,))
        ces.append(m["eval/ce@0.5"])
      return jnp.mean(jnp.stack(ces))

    curve = [(0, float(held_ce(params)))]
    for i in range(args.steps):
      params, opt_state, loss = step(params, opt_state, jnp.asarray(train[i]), i)
      if (i + 1) % args.eval_every == 0 or i + 1 == args.steps:
        curve.append((i + 1, float(held_ce(params))))
        print(f"[{dtype}] step {i + 1}: train loss {float(loss):.4f}, held-out masked CE {curve[-1][1]:.4f}",
              flush=True)
    curves[dtype] = curve
  print(f"\n{args.shape}, {args.steps} steps, batch {b} x {s}, lr {args.lr}\n")
  print("| step | float32 held-out CE | bf16 held-out CE | rel. diff |")
  print("|---:|---:|---:|---:|")
  for (i, a), (_, c) in zip(curves["float32"], curves["bfloat16"]):
    print(f"| {i} | {a:.4f} | {c:.4f} | {abs(c - a) / a:.2%} |")
  a, c = curves["float32"][-1][1], curves["bfloat16"][-1][1]
  ok = abs(c - a) <= args.tol * a
  print(f"\nfinal held-out CE: float32 {a:.4f}, bf16 {c:.4f} (start {curves['float32'][0][1]:.4f}): "
        + ("within" if ok else "OUTSIDE") + f" the {args.tol:.0%} tolerance")
  sys.exit(0 if ok else 1)


if __name__ == "__main__":
  main()
