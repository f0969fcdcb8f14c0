#!/usr/bin/env python
"""Self-contained GPU benchmark of the two pplx-embed training steps: tokens/s, MFU and a step-time breakdown.

    python benchmarks/gpu_step.py                       # Qwen3-0.6B shape, seq 4096, on the GPU (cuDNN attention)
    python benchmarks/gpu_step.py --batch 8 --remat dots_no_batch --json out.json
    python benchmarks/gpu_step.py --tiny                # CPU smoke run (seconds): same code, tiny shapes

Depends only on jax, optax and numpy (no pplx_jax, no torch), so it runs as is on a bare GPU machine. The model is a
Qwen3-0.6B-shaped bidirectional encoder written here in plain JAX: token embedding, 28 scanned pre-norm blocks
(RMSNorm, GQA attention 16/8 heads x 128 with per-head q/k RMSNorm and RoPE, SwiGLU 3072), final RMSNorm, LM head
tied to the embedding; float32 parameters and AdamW state, bfloat16 compute on GPU. Attention is
`jax.nn.dot_product_attention(implementation="cudnn")` on GPU (flash attention; bidirectional, no mask: every row
is one full document) and the XLA implementation elsewhere.

Stages:
  diffusion    masked-diffusion step (the paper's stage 1): per-row t ~ U(eps, 1), tokens masked with
               probability t, cross-entropy on masked positions weighted 1/t, LM head and float32 CE in sequence
               chunks (the [B, S, V] logits never exist at once; each chunk is recomputed in the backward pass).
  contrastive  pair InfoNCE step (stage 2): mean-pooled query (128 tokens) and document (512 tokens) embeddings,
               in-batch negatives (query-document and query-query), temperature 0.02.

Breakdown: three programs per stage, jitted separately on the same inputs: forward (loss only), forward + backward
(loss and gradients), and the full step (+ gradient clipping and AdamW, params and state donated). backward =
(forward + backward) - forward, optimizer = step - (forward + backward); medians of --steps timed runs after
--warmup. MFU = model FLOPs / step time / peak, model FLOPs = 3 x forward FLOPs with full bidirectional attention
(4 * S * heads * head_dim per token per layer) and, for diffusion, the LM head; remat recomputation is not counted
(it is hardware work, not model work). Peak: the spec-sheet dense bf16 number for known GPUs, else a measured
matmul peak (printed either way).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

# Dense bf16 peak per device (spec sheets, no sparsity), matched against jax's device_kind.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "GH200": 989e12, "B200": 2250e12, "A100": 312e12,
              "A800": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 70e12, "RTX 4090": 165e12}

QWEN3_06B = dict(vocab=151_936, hidden=1024, layers=28, heads=16, kv_heads=8, head_dim=128, mlp=3072)
TINY = dict(vocab=512, hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16, mlp=128)


def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--tiny", action="store_true", help="tiny shapes for a CPU smoke run")
  ap.add_argument("--stages", default="diffusion,contrastive")
  ap.add_argument("--batch", type=int, default=None, help="diffusion rows per step (default 4; tiny 2)")
  ap.add_argument("--seq", type=int, default=None, help="diffusion sequence length (default 4096; tiny 64)")
  ap.add_argument("--pairs", type=int, default=None, help="contrastive pairs per step (default 64; tiny 4)")
  ap.add_argument("--q-len", type=int, default=None, help="query length (default 128; tiny 16)")
  ap.add_argument("--d-len", type=int, default=None, help="document length (default 512; tiny 32)")
  ap.add_argument("--layers", type=int, default=None, help="override the number of layers")
  ap.add_argument("--remat", choices=("none", "full", "dots", "dots_no_batch"), default="dots_no_batch")
  ap.add_argument("--attn", choices=("auto", "cudnn", "xla"), default="auto", help="auto: cudnn on GPU, else xla")
  ap.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default="auto",
                  help="compute dtype (auto: bfloat16 on GPU, float32 on CPU)")
  ap.add_argument("--ce-chunk", type=int, default=1024, help="sequence positions per cross-entropy chunk")
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--warmup", type=int, default=2)
  ap.add_argument("--json", default="")
  return ap.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------------
# Model


def init_params(key, c: dict) -> dict:
  d, n, kv, h, f, nl = c["hidden"], c["heads"], c["kv_heads"], c["head_dim"], c["mlp"], c["layers"]
  ks = iter(jax.random.split(key, 8))
  normal = lambda shape: 0.02 * jax.random.normal(next(ks), shape, jnp.float32)
  return {
      "embed": normal((c["vocab"], d)),
      "layers": {"q": normal((nl, d, n * h)), "k": normal((nl, d, kv * h)), "v": normal((nl, d, kv * h)),
                 "o": normal((nl, n * h, d)), "gate": normal((nl, d, f)), "up": normal((nl, d, f)),
                 "down": normal((nl, f, d)), "q_norm": jnp.ones((nl, h)), "k_norm": jnp.ones((nl, h)),
                 "ln1": jnp.ones((nl, d)), "ln2": jnp.ones((nl, d))},
      "norm": jnp.ones((d,)),
  }


def rms_norm(x, w, eps=1e-6):
  x32 = x.astype(jnp.float32)
  x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return w.astype(x.dtype) * x32.astype(x.dtype)


def rope(x, positions, theta=1_000_000.0):
  h = x.shape[-1]
  inv = 1.0 / (theta ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h))
  ang = positions.astype(jnp.float32)[:, None] * inv
  cos = jnp.concatenate([jnp.cos(ang)] * 2, -1)[None, :, None, :].astype(x.dtype)
  sin = jnp.concatenate([jnp.sin(ang)] * 2, -1)[None, :, None, :].astype(x.dtype)
  rot = jnp.concatenate([-x[..., h // 2:], x[..., :h // 2]], -1)
  return x * cos + rot * sin


def attention(q, k, v, impl):
  """Bidirectional GQA attention, [B, S, N, H] x [B, S, K, H] -> [B, S, N, H]; softmax in float32."""
  if impl == "cudnn":
    return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
  return jax.nn.dot_product_attention(q, k, v, implementation="xla")


def encoder(params, ids, c: dict, dtype, remat: str, impl: str):
  """Final hidden states [B, S, D] in the compute dtype."""
  b, s = ids.shape
  n, kv, h = c["heads"], c["kv_heads"], c["head_dim"]
  pos = jnp.arange(s)
  x = jnp.take(params["embed"], ids, axis=0).astype(dtype)

  def layer(x, p):
    w = lambda name: p[name].astype(dtype)
    t = rms_norm(x, p["ln1"]).reshape(b * s, -1)
    q = (t @ w("q")).reshape(b, s, n, h)
    k = (t @ w("k")).reshape(b, s, kv, h)
    v = (t @ w("v")).reshape(b, s, kv, h)
    q = rope(rms_norm(q, p["q_norm"]), pos)
    k = rope(rms_norm(k, p["k_norm"]), pos)
    a = attention(q, k, v, impl).reshape(b * s, n * h)
    x = x + (a @ w("o")).reshape(b, s, -1)
    t = rms_norm(x, p["ln2"]).reshape(b * s, -1)
    x = x + ((jax.nn.silu(t @ w("gate")) * (t @ w("up"))) @ w("down")).reshape(b, s, -1)
    return x, None

  policy = {"full": jax.checkpoint_policies.nothing_saveable, "dots": jax.checkpoint_policies.checkpoint_dots,
            "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}.get(remat)
  if policy is not None:
    layer = jax.checkpoint(layer, policy=policy)
  x, _ = jax.lax.scan(layer, x, params["layers"])
  return rms_norm(x, params["norm"])


# ---------------------------------------------------------------------------------------------------------------
# Objectives


def diffusion_loss(params, batch, c: dict, dtype, remat, impl, ce_chunk, mask_id):
  ids, key = batch["ids"], batch["key"]
  b, s = ids.shape
  kt, km = jax.random.split(key)
  t = jax.random.uniform(kt, (b, 1), minval=1e-3, maxval=1.0)
  masked = jax.random.uniform(km, (b, s)) < t
  hidden = encoder(params, jnp.where(masked, mask_id, ids), c, dtype, remat, impl)
  w = params["embed"].astype(dtype)  # tied LM head
  chunk = min(ce_chunk, s)
  nc = s // chunk

  @jax.checkpoint  # one chunk's float32 logits alive at a time, recomputed in the backward pass
  def chunk_ce(args):
    hc, tc = args  # [B, C, D], [B, C]
    logits = jnp.einsum("bcd,vd->bcv", hc, w, preferred_element_type=jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    tgt = jnp.take_along_axis(logits, tc[..., None], axis=-1)[..., 0]
    return lse - tgt

  to_chunks = lambda a: jnp.moveaxis(a[:, :nc * chunk].reshape((b, nc, chunk) + a.shape[2:]), 1, 0)
  ce = jax.lax.map(chunk_ce, (to_chunks(hidden), to_chunks(ids)))  # [nc, B, C]
  ce = jnp.moveaxis(ce, 0, 1).reshape(b, nc * chunk)
  weight = masked[:, :nc * chunk] / t  # ELBO weight 1/t on masked tokens
  return jnp.sum(ce * weight) / (b * nc * chunk)


def contrastive_loss(params, batch, c: dict, dtype, remat, impl, temperature=0.02):
  def embed(ids):
    h = encoder(params, ids, c, dtype, remat, impl).astype(jnp.float32).mean(axis=1)
    return h / jnp.linalg.norm(h, axis=-1, keepdims=True)

  q, d = embed(batch["q_ids"]), embed(batch["d_ids"])
  n = q.shape[0]
  qd = q @ d.T / temperature
  qq = jnp.where(jnp.eye(n, dtype=bool), -jnp.inf, q @ q.T / temperature)  # other queries as negatives
  logits = jnp.concatenate([qd, qq], axis=1)
  return jnp.mean(jax.nn.logsumexp(logits, axis=1) - jnp.diagonal(qd))


# ---------------------------------------------------------------------------------------------------------------
# FLOPs, peak


def forward_flops_per_token(c: dict, seq: int, lm_head: bool) -> float:
  d, n, kv, h, f = c["hidden"], c["heads"], c["kv_heads"], c["head_dim"], c["mlp"]
  per_layer = 2 * d * (n * h + 2 * kv * h) + 2 * n * h * d + 2 * 3 * d * f + 4 * seq * n * h
  return c["layers"] * per_layer + (2 * d * c["vocab"] if lm_head else 0)


def measured_matmul_peak(dtype) -> float:
  n = 8192 if jax.default_backend() == "gpu" else 1024
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = math.inf
  for _ in range(5):
    t0 = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2 * n ** 3 / best


def spec_peak() -> tuple[float | None, str]:
  kind = jax.devices()[0].device_kind
  for name, peak in PEAK_FLOPS.items():
    if name.lower() in kind.lower():
      return peak, kind
  return None, kind


# ---------------------------------------------------------------------------------------------------------------
# Timing


def timed(fn, args_fn, steps: int, warmup: int) -> float:
  """Median seconds of fn(*args_fn()) after warmup; args_fn builds fresh (donatable) inputs for every call."""
  times = []
  for i in range(warmup + steps):
    args = args_fn()
    jax.block_until_ready(args)
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    if i >= warmup:
      times.append(time.perf_counter() - t0)
  return statistics.median(times)


def bench_stage(stage: str, a, c: dict, dtype, impl: str, peak: float) -> dict:
  key = jax.random.key(0)
  params = init_params(key, c)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-4, weight_decay=0.01))
  opt_state = tx.init(params)
  rng = np.random.default_rng(0)
  if stage == "diffusion":
    batch = {"ids": jnp.asarray(rng.integers(0, c["vocab"] - 1, (a.batch, a.seq)), jnp.int32),
             "key": jax.random.key(1)}
    loss_fn = partial(diffusion_loss, c=c, dtype=dtype, remat=a.remat, impl=impl, ce_chunk=a.ce_chunk,
                      mask_id=c["vocab"] - 1)
    tokens = a.batch * a.seq
    flops = 3 * forward_flops_per_token(c, a.seq, True) * tokens
  else:
    batch = {"q_ids": jnp.asarray(rng.integers(0, c["vocab"], (a.pairs, a.q_len)), jnp.int32),
             "d_ids": jnp.asarray(rng.integers(0, c["vocab"], (a.pairs, a.d_len)), jnp.int32)}
    loss_fn = partial(contrastive_loss, c=c, dtype=dtype, remat=a.remat, impl=impl)
    tokens = a.pairs * (a.q_len + a.d_len)
    flops = 3 * a.pairs * (forward_flops_per_token(c, a.q_len, False) * a.q_len
                           + forward_flops_per_token(c, a.d_len, False) * a.d_len)

  fwd = jax.jit(loss_fn)
  fwd_bwd = jax.jit(jax.value_and_grad(loss_fn))

  def step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  step = jax.jit(step, donate_argnums=(0, 1))
  t0 = time.perf_counter()
  loss = float(fwd(params, batch))
  compile_s = time.perf_counter() - t0
  state = {"p": params, "o": opt_state}

  def step_args():  # the step donates params/state: feed it its own outputs, as a training loop does
    return state["p"], state["o"], batch

  def run_step(p, o, b):
    state["p"], state["o"], l = step(p, o, b)
    return l

  t_fwd = timed(fwd, lambda: (params, batch), a.steps, a.warmup)
  t_fb = timed(fwd_bwd, lambda: (params, batch), a.steps, a.warmup)
  t_step = timed(run_step, step_args, a.steps, a.warmup)
  return dict(stage=stage, tokens=tokens, model_flops=flops, loss_at_init=loss, first_call_s=compile_s,
              forward_s=t_fwd, backward_s=max(t_fb - t_fwd, 0.0), optimizer_s=max(t_step - t_fb, 0.0),
              step_s=t_step, tokens_per_s=tokens / t_step, tflops=flops / t_step / 1e12, mfu=flops / t_step / peak)


def main(argv=None):
  a = parse_args(argv)
  c = dict(TINY if a.tiny else QWEN3_06B)
  if a.layers:
    c["layers"] = a.layers
  defaults = dict(batch=2, seq=64, pairs=4, q_len=16, d_len=32) if a.tiny else dict(batch=4, seq=4096, pairs=64,
                                                                                     q_len=128, d_len=512)
  for k, v in defaults.items():
    if getattr(a, k) is None:
      setattr(a, k, v)
  on_gpu = jax.default_backend() == "gpu"
  dtype = {"auto": jnp.bfloat16 if on_gpu else jnp.float32, "bfloat16": jnp.bfloat16,
           "float32": jnp.float32}[a.dtype]
  impl = ("cudnn" if on_gpu else "xla") if a.attn == "auto" else a.attn
  peak, kind = spec_peak()
  measured = measured_matmul_peak(dtype)
  peak_src = "spec sheet, dense bf16" if peak else f"measured {jnp.dtype(dtype).name} matmul"
  peak = peak or measured
  n_params = sum(x.size for x in jax.tree.leaves(jax.eval_shape(lambda: init_params(jax.random.key(0), c))))
  print(f"device: {kind} ({jax.default_backend()}, {jax.device_count()} device(s)); jax {jax.__version__}, "
        f"optax {optax.__version__}")
  print(f"model: {n_params / 1e6:.1f}M params, {c['layers']} layers, hidden {c['hidden']}, heads {c['heads']}/"
        f"{c['kv_heads']} x {c['head_dim']}, MLP {c['mlp']}, vocab {c['vocab']}; compute {jnp.dtype(dtype).name}, "
        f"attention {impl}, remat {a.remat}")
  print(f"peak: {peak / 1e12:.4g} TFLOP/s ({peak_src}); measured matmul {measured / 1e12:.4g} TFLOP/s")
  results = []
  for stage in a.stages.split(","):
    r = bench_stage(stage, a, c, dtype, impl, peak)
    shape = f"{a.batch} x {a.seq}" if stage == "diffusion" else f"{a.pairs} pairs x ({a.q_len} + {a.d_len})"
    r["shape"] = shape
    results.append(r)

  print("\n| stage | batch | tokens/s | TFLOP/s | MFU | step (ms) | loss at init |")
  print("|---|---|---:|---:|---:|---:|---:|")
  for r in results:
    print(f"| {r['stage']} | {r['shape']} | {r['tokens_per_s']:,.0f} | {r['tflops']:.4g} | {100 * r['mfu']:.1f}% | "
          f"{1e3 * r['step_s']:.1f} | {r['loss_at_init']:.3f} |")
  print("\n| stage | forward (ms) | backward (ms) | optimizer (ms) | step (ms) | forward share |")
  print("|---|---:|---:|---:|---:|---:|")
  for r in results:
    print(f"| {r['stage']} | {1e3 * r['forward_s']:.1f} | {1e3 * r['backward_s']:.1f} | {1e3 * r['optimizer_s']:.1f} "
          f"| {1e3 * r['step_s']:.1f} | {100 * r['forward_s'] / r['step_s']:.0f}% |")
  if a.json:
    with open(a.json, "w") as f:
      json.dump(dict(device=kind, backend=jax.default_backend(), peak_flops=peak, peak_source=peak_src,
                     measured_matmul_flops=measured, model=c, args=vars(a), results=results), f, indent=2)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
