#!/usr/bin/env python
"""Pair-stage (contrastive) train step: pplx-jax vs torch + transformers + sentence-transformers, in one process.

    python benchmarks/contrastive_step.py [--preset smollm2|small] [--dtypes float32,bfloat16] [--batch 32]

Both sides train the same bidirectional Qwen3 encoder on the same loss: pair InfoNCE with in-batch document
negatives over cosine similarities at scale 1/0.05 (sentence-transformers' MultipleNegativesRankingLoss, the
reference users know; JAX: `contrastive.pair_infonce(q, d, 0.05, margin=None, use_qq=False)` on `contrastive.embed(...,
quantize="none")`, mean pooling), queries of 32 tokens and documents of 128, global-norm clipping 1.0 and AdamW.
JAX: the trainer's step structure (value_and_grad over a pure params dict, the stage's optax chain, donated, jitted);
torch: a SentenceTransformer built from the transformers `Qwen3Model` and a mean `Pooling` module, MNRL's forward,
`clip_grad_norm_`, fused AdamW; bf16 = `torch.autocast("cpu", bfloat16)`. Steps are interleaved (jax, torch, jax
matmul, torch matmul, ...) so every column sees the same machine load; the table reports the jax/torch ratio.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
sys.path.insert(0, os.path.dirname(_HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import diffusion_step as ds  # noqa: E402  (shapes, matmul runners, round_robin)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from machine import describe_machine, load_average  # noqa: E402

from pplx_jax.models import encoder  # noqa: E402
from pplx_jax.objectives import contrastive  # noqa: E402
from pplx_jax.stages import flops as flops_lib  # noqa: E402
from pplx_jax.stages.optimizer import default_config as optimizer_config  # noqa: E402
from pplx_jax.stages.optimizer import make_optimizer  # noqa: E402

SCALE = 20.0  # MNRL's default scale = 1 / temperature 0.05
SMALL = dict(name="h256-4layers", hidden=256, layers=4, heads=4, kv_heads=2, head_dim=64, mlp=768, vocab=8192)
PRESETS = {"smollm2": dict(ds.SMOLLM2, name="smollm2-135m"), "small": SMALL}


def make_batch(shape, n, q_len, d_len, seed=0):
  rs = np.random.RandomState(seed)
  out = {}
  for tower, length in (("q", q_len), ("d", d_len)):
    ids = rs.randint(0, shape["vocab"], size=(n, length)).astype(np.int32)
    lens = rs.randint(length // 2, length + 1, size=n)
    mask = (np.arange(length)[None] < lens[:, None]).astype(np.int32)  # right padding, as a tokenizer gives
    out[tower] = (ids * mask, mask)
  return out


class JaxStep:

  def __init__(self, shape, dtype, batch, remat, residual="float32"):
    cfg = ds.model_config(dict(shape, batch=1, seq=1), dict(ds.CPU_DEFAULTS, dtype=dtype, remat=remat,
                                                            residual=residual))
    self.cfg = cfg.replace(lm_head=False, tie_embeddings=False)
    graphdef, state = nnx.split(encoder.create_model(self.cfg, seed=0))
    params = nnx.to_pure_dict(state)
    tx, _ = make_optimizer(optimizer_config(), 100_000)

    def train_step(params, opt_state, batch):
      def loss_fn(p):
        model = nnx.merge(graphdef, nnx.State(p))
        q = contrastive.embed(model, *batch["q"], quantize="none")
        d = contrastive.embed(model, *batch["d"], quantize="none")
        return contrastive.pair_infonce(q, d, 1.0 / SCALE, margin=None, use_qq=False)

      (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss

    self.num_params = int(sum(x.size for x in jax.tree.leaves(params)))
    self.params, self.opt_state = params, jax.jit(tx.init)(params)
    self.batch = jax.tree.map(jnp.asarray, batch)
    t = time.perf_counter()
    self._fn = jax.jit(train_step, donate_argnums=(0, 1)).lower(self.params, self.opt_state, self.batch).compile()
    self.compile_s = time.perf_counter() - t

  def __call__(self):
    self.params, self.opt_state, loss = self._fn(self.params, self.opt_state, self.batch)
    return float(loss)


class TorchStep:

  def __init__(self, shape, dtype, batch):
    import torch
    from sentence_transformers import SentenceTransformer, losses
    from sentence_transformers import models as st_models
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=shape["vocab"], hidden_size=shape["hidden"], intermediate_size=shape["mlp"],
                      num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                      num_key_value_heads=shape["kv_heads"], head_dim=shape["head_dim"], rms_norm_eps=1e-6,
                      rope_theta=1_000_000.0, tie_word_embeddings=False, attention_bias=False,
                      max_position_embeddings=40_960, is_causal=False, use_cache=False)
    cfg._attn_implementation = "sdpa"

    class Encoder(torch.nn.Module):  # the sentence-transformers module contract: features in, token embeddings out
      def __init__(self):
        super().__init__()
        self.model = Qwen3Model(cfg)

      def forward(self, features):
        out = self.model(input_ids=features["input_ids"], attention_mask=features["attention_mask"])
        return dict(features, token_embeddings=out.last_hidden_state)

    enc = Encoder()
    self.st = SentenceTransformer(modules=[enc, st_models.Pooling(shape["hidden"], "mean")], device="cpu").train()
    self.loss = losses.MultipleNegativesRankingLoss(self.st, scale=SCALE)
    self.num_params = int(sum(p.numel() for p in enc.parameters()))
    oc = optimizer_config()
    named = list(enc.named_parameters())
    decay = [p for n, p in named if p.ndim >= 2 and "embed_tokens" not in n]
    no_decay = [p for n, p in named if not (p.ndim >= 2 and "embed_tokens" not in n)]
    self.opt = torch.optim.AdamW([dict(params=decay, weight_decay=float(oc.weight_decay)),
                                  dict(params=no_decay, weight_decay=0.0)], lr=1e-5,
                                 betas=(float(oc.b1), float(oc.b2)), eps=float(oc.eps), fused=True)
    self.clip = float(oc.clip_norm)
    self.bf16 = dtype == "bfloat16"
    self.features = [dict(input_ids=torch.as_tensor(ids, dtype=torch.long),
                          attention_mask=torch.as_tensor(mask, dtype=torch.long)) for ids, mask in (batch["q"], batch["d"])]
    self.torch = torch

  def __call__(self):
    torch = self.torch
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
      loss = self.loss(self.features, None)
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.st.parameters(), self.clip, foreach=True)
    self.opt.step()
    return float(loss.item())


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--preset", choices=tuple(PRESETS), default="smollm2")
  ap.add_argument("--dtypes", default="float32,bfloat16")
  ap.add_argument("--batch", type=int, default=32, help="pairs per step (in-batch negatives: batch - 1)")
  ap.add_argument("--q-len", type=int, default=32)
  ap.add_argument("--d-len", type=int, default=128)
  ap.add_argument("--layers", type=int, default=None)
  ap.add_argument("--remat", default="dots_with_no_batch_dims")
  ap.add_argument("--residual", choices=("float32", "compute"), default="float32", help="model.residual_dtype")
  ap.add_argument("--steps", type=int, default=3)
  ap.add_argument("--warmup", type=int, default=1)
  ap.add_argument("--matmul-n", type=int, default=2048)
  ap.add_argument("--no-torch", action="store_true")
  ap.add_argument("--json", default="")
  args = ap.parse_args()
  import torch
  torch.set_num_threads(os.cpu_count() or 1)
  shape = dict(PRESETS[args.preset])
  if args.layers:
    shape.update(layers=args.layers, name=f"{shape['name']}-layers{args.layers}")
  batch = make_batch(shape, args.batch, args.q_len, args.d_len)
  print(f"# machine: {describe_machine()}; jax {jax.__version__}, torch {torch.__version__}; load {load_average()}",
        flush=True)
  rows = []
  for dtype in [d for d in args.dtypes.split(",") if d]:
    js = JaxStep(shape, dtype, batch, args.remat, args.residual)
    print(f"[compile] {shape['name']} {dtype}: {js.compile_s:.1f}s", flush=True)
    runners = {"jax": js, "jax matmul": ds.JaxMatmul(args.matmul_n, dtype)}
    if not args.no_torch:
      ts = TorchStep(shape, dtype, batch)
      assert ts.num_params == js.num_params, (ts.num_params, js.num_params)
      runners.update({"torch": ts, "torch matmul": ds.TorchMatmul(args.matmul_n, "cpu", dtype)})
    tm = ds.round_robin(runners, args.steps, args.warmup)
    tokens = {t: int(np.sum(m)) for t, (_, m) in batch.items()}  # real tokens (padding excluded)
    fl = sum(flops_lib.train_flops_per_token(js.cfg, length, lm_head=False) * tokens[t]
             for t, length in (("q", args.q_len), ("d", args.d_len)))
    row = dict(shape=shape["name"], dtype=dtype, params=js.num_params, model_flops=fl, load=load_average(),
               timing={k: {kk: vv for kk, vv in v.items() if kk != "times_s"} for k, v in tm.items()})
    for k in ("jax", "torch"):
      if k in tm:
        row[f"{k}_ms"] = 1e3 * tm[k]["median_s"]
        row[f"{k}_peak"] = runners[f"{k} matmul"].flops / tm[f"{k} matmul"]["median_s"]
        row[f"{k}_frac"] = fl / tm[k]["median_s"] / row[f"{k}_peak"]
    rows.append(row)
    print(f"[{shape['name']} {dtype}] jax {row['jax_ms']:.0f} ms" + (f", torch {row['torch_ms']:.0f} ms, jax/torch "
          f"{row['torch_ms'] / row['jax_ms']:.2f}" if "torch_ms" in row else "") + f"; load {row['load']}", flush=True)
    js = ts = runners = None
    gc.collect()
  print(f"\n{shape['name']}, {args.batch} pairs of {args.q_len} + {args.d_len} tokens, {args.steps} steps after "
        f"{args.warmup} warmup, interleaved\n")
  print("| shape | dtype | params | jax ms/step | torch ms/step | jax/torch (steps/s) | jax % of matmul peak | "
        "torch % of matmul peak | matmul peak jax / torch (TFLOP/s) |")
  print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
  for r in rows:
    t = "torch_ms" in r
    print(f"| {r['shape']} | {r['dtype']} | {r['params'] / 1e6:.1f}M | {r['jax_ms']:.0f} | "
          + (f"{r['torch_ms']:.0f} | {r['torch_ms'] / r['jax_ms']:.2f} | " if t else "- | - | "), end="")
    print(f"{100 * r['jax_frac']:.0f}% | " + (f"{100 * r['torch_frac']:.0f}% | " if t else "- | ")
          + f"{r['jax_peak'] / 1e12:.3f} / " + (f"{r['torch_peak'] / 1e12:.3f} |" if t else "- |"))
  by = {r["dtype"]: r for r in rows}
  if "float32" in by and "bfloat16" in by:
    f, b = by["float32"], by["bfloat16"]
    print(f"\nbf16 / float32 steps/s: jax {f['jax_ms'] / b['jax_ms']:.2f}x"
          + (f", torch {f['torch_ms'] / b['torch_ms']:.2f}x" if "torch_ms" in f else ""))
  if args.json:
    with open(args.json, "w") as fh:
      json.dump(dict(machine=describe_machine(), args=vars(args), rows=rows), fh, indent=1, default=str)


if __name__ == "__main__":
  main()
