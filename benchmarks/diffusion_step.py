#!/usr/bin/env python
"""Stage-1 (masked-diffusion) train step: pplx-jax vs torch + transformers, and achieved FLOP/s vs a matmul peak.

    python benchmarks/diffusion_step.py --preset cpu [--steps 5] [--warmup 1] [--json out.json]   # ~2 min, 2 cores
    python benchmarks/diffusion_step.py --preset qwen3-0.6b [--batch 4] [--remat full]          # GPU: MFU, seq 4096
    python benchmarks/diffusion_step.py --preset cpu --sweep [--sweep-variants 0,1,2]           # JAX variants

What is timed, per shape, in one process:
  * pplx-jax: the trainer's step (`trainer.train`'s `train_step`): value_and_grad of `diffusion.diffusion_loss` over
    a pure params dict merged with `nnx.merge(graphdef, nnx.State(p))`, the stage's optax chain
    (`make_optimizer(default_config())`: global-norm clipping + AdamW with the decay mask + WSD schedule), jitted with
    params/opt_state donated, synchronised by reading the loss on the host as the trainer does. float32 on CPU;
    bfloat16 compute with float32 params and optimizer on GPU. The default is the library as is (flattened-token
    projections, the fused linear CE, GQA folded into the query rows); the variants (`--layer bsd`, `--ce plain`,
    `--attn grouped|cudnn`, `--layer flatcat`) are defined in this file and patched in while the step is traced --
    `--check` compares a variant's loss, metrics and gradients with the library's own functions.
  * torch reference: `transformers.Qwen3Model(Qwen3Config(..., is_causal=False))` (SDPA attention), a tied LM
    head, the SAME objective written in torch (stratified t, Bernoulli masks with p = eps + (1 - eps) t, the mask id
    written over masked tokens, shifted targets, float32 CE with the mask logit excluded, weighted 1/p and normalised
    by the valid tokens, masked accuracy), clip_grad_norm_(1.0) and the fused torch.optim.AdamW (decay on matrices
    only), synchronised by `loss.item()`; torch threads = CPU count; bf16 autocast on GPU. Parameter counts are
    asserted equal.
On CPU the steps are interleaved (JAX step, torch step, JAX matmul, torch matmul, ...) so that all columns see the
same machine load; on GPU (or with --sequential) torch runs first and is freed, then JAX. Each column is the median
of the timed steps. Model FLOPs per step: `pplx_jax.stages.flops.train_flops_per_token` (3 x forward, LM head
included; remat recomputation is not counted). The matmul peak is the median of one square float32 2048 matmul
timed between the steps (the same load as the steps); best-of peaks (1024 and 2048, before and after) are printed
too. On GPU the MFU is relative to the spec-sheet peak (`flops.device_peak_flops()`).

Only jax, flax, optax and numpy are required; without torch (or transformers, or CUDA on a GPU machine) the torch
column is skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# ----------------------------------------------------------------------------------------------------------------
# Shapes

# name, hidden, layers, heads, kv_heads, head_dim, mlp, vocab, batch, seq
CPU_SHAPES = (
    dict(name="h256-b16-s128", hidden=256, layers=4, heads=4, kv_heads=2, head_dim=64, mlp=768, vocab=8192,
         batch=16, seq=128),
    dict(name="h256-b8-s256", hidden=256, layers=4, heads=4, kv_heads=2, head_dim=64, mlp=768, vocab=8192,
         batch=8, seq=256),
    dict(name="h512-b8-s128", hidden=512, layers=4, heads=8, kv_heads=4, head_dim=64, mlp=1536, vocab=8192,
         batch=8, seq=128),
)

# Real model sizes on CPU (--preset smollm2 / qwen3-0.6b-cut). The SmolLM2-135M shape (30 layers, hidden 576, 9/3 heads,
# head_dim 64, MLP 1536, vocab 49152) runs as a Qwen3 block on both sides (+ per-head q/k RMSNorm, 3,840 params).
SMOLLM2 = dict(name="smollm2-135m-b16-s128", hidden=576, layers=30, heads=9, kv_heads=3, head_dim=64, mlp=1536,
               vocab=49_152, batch=16, seq=128)
QWEN3_0_6B_CUT = dict(name="qwen3-0.6b-4layers-b8-s128", hidden=1024, layers=4, heads=16, kv_heads=8, head_dim=128,
                      mlp=3072, vocab=151_936, batch=8, seq=128)
CPU_PRESETS = {"cpu": CPU_SHAPES, "smollm2": (SMOLLM2,), "qwen3-0.6b-cut": (QWEN3_0_6B_CUT,)}

# configs/model/qwen3_0_6b.py (Qwen/Qwen3-0.6B-Base)
QWEN3_0_6B = dict(name="qwen3-0.6b", hidden=1024, layers=28, heads=16, kv_heads=8, head_dim=128, mlp=3072,
                  vocab=151_936, batch=4, seq=4096)

# The fastest JAX settings found on CPU (see benchmarks/README.md and --sweep) and the GPU defaults.
CPU_DEFAULTS = dict(scan=True, remat="dots_with_no_batch_dims", ce_chunk=1024, attn="library", ce="fused",
                    layer="library", dtype="float32", residual="float32")
GPU_DEFAULTS = dict(scan=True, remat="dots_with_no_batch_dims", ce_chunk=1024, attn="cudnn", ce="fused",
                    layer="library", dtype="bfloat16", residual="float32")

# --sweep: each variant changes the CPU defaults by these fields (measured round-robin in one process).
SWEEP = (
    ("default (the library, remat=dots_with_no_batch_dims)", {}),
    ("before the optimisations (3-D einsums, plain CE, grouped attention, remat=full)",
     dict(layer="bsd", ce="plain", attn="grouped", remat="full")),
    ("layer=bsd (3-D einsums)", dict(layer="bsd")),
    ("ce=plain (checkpointed chunks)", dict(ce="plain")),
    ("attn=grouped (group axis einsums)", dict(attn="grouped")),
    ("remat=full", dict(remat="full")),
    ("remat=none", dict(remat="none")),
    ("remat=dots", dict(remat="dots")),
    ("remat=save_attention_out", dict(remat="save_attention_out")),
    ("scan=False, remat=none", dict(scan=False, remat="none")),
    ("scan=False, remat=full", dict(scan=False, remat="full")),
    ("ce_chunk=128", dict(ce_chunk=128)),
    ("layer=flatcat", dict(layer="flatcat")),
    ("layer=flatcat, scan=False, remat=none", dict(layer="flatcat", scan=False, remat="none")),
    ("scan=False + unstack, remat=none", dict(scan=False, unstack=True, remat="none")),
    ("scan=False + unstack, remat=dots_with_no_batch_dims", dict(scan=False, unstack=True)),
)


def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--preset", choices=tuple(CPU_PRESETS) + ("qwen3-0.6b",), default="cpu")
  ap.add_argument("--steps", type=int, default=None, help="timed steps per framework (cpu 5, gpu 10)")
  ap.add_argument("--warmup", type=int, default=None, help="untimed steps after compilation (cpu 1, gpu 2)")
  ap.add_argument("--json", default="", help="write the results here")
  ap.add_argument("--shapes", default="", help="comma-separated shape names to keep (cpu preset)")
  ap.add_argument("--no-torch", action="store_true", help="skip the torch reference")
  ap.add_argument("--sweep", action="store_true", help="time the JAX variants of SWEEP on the first shape")
  ap.add_argument("--sweep-variants", default="", help="comma-separated indices into SWEEP (default: all)")
  ap.add_argument("--xla-flags", default="", help="appended to XLA_FLAGS before jax is imported")
  # JAX step knobs (defaults: CPU_DEFAULTS / GPU_DEFAULTS)
  ap.add_argument("--scan", choices=("true", "false"), default=None, help="scan over layers")
  ap.add_argument("--remat", choices=("none", "full", "dots", "dots_with_no_batch_dims", "save_attention_out"),
                  default=None)
  ap.add_argument("--ce-chunk", type=int, default=None, help="DiffusionConfig.ce_chunk_size")
  ap.add_argument("--attn", choices=("library", "grouped", "cudnn"), default=None,
                  help="library: pplx_jax.models.attention (XLA, GQA groups folded into the query rows); grouped: "
                       "the earlier version with a group axis; cudnn: jax.nn.dot_product_attention("
                       "implementation='cudnn') with per-row lengths (exact for one right-padded document per row, as "
                       "here; XLA on CPU)")
  ap.add_argument("--ce", choices=("fused", "plain"), default=None,
                  help="fused: the library's training loss (fused linear CE: gradients formed chunk by chunk in the "
                       "forward pass); plain: masked_diffusion_loss(fused=False), chunked and checkpointed")
  ap.add_argument("--layer", choices=("library", "bsd", "flatcat"), default=None,
                  help="library: qwen3.decoder_layer (projections over flattened [B*S] tokens); bsd: the earlier "
                       "[B, S, D] einsums; flatcat: the library with q|k|v and gate|up each computed by one matmul")
  ap.add_argument("--unstack", choices=("true", "false"), default=None,
                  help="with --scan false: split the stacked layer params once (lax.unstack) instead of indexing")
  ap.add_argument("--dtype", choices=("float32", "bfloat16"), default=None, help="JAX compute dtype")
  ap.add_argument("--residual", choices=("float32", "compute"), default=None,
                  help="model.residual_dtype: the residual stream in float32 (default) or the compute dtype")
  ap.add_argument("--dtypes", default="", help="comma-separated compute dtypes, one row each (e.g. float32,bfloat16); "
                  "torch runs in the same precision (bf16 autocast), the matmul peak too")
  ap.add_argument("--profile", action="store_true",
                  help="print a per-op summary of one JAX step per row (jax.profiler trace: XLA ops by time)")
  # shape overrides (e.g. a small smoke test of the GPU preset on CPU)
  for name in ("batch", "seq", "layers", "hidden", "vocab"):
    ap.add_argument(f"--{name}", type=int, default=None)
  ap.add_argument("--matmul-n", default="", help="square matmul sizes for the peak (cpu 1024,2048; gpu 8192); "
                  "the largest is also timed between the steps")
  ap.add_argument("--sequential", action="store_true",
                  help="time torch first, then JAX (the default on GPU) instead of interleaving their steps")
  ap.add_argument("--check", action="store_true",
                  help="check the JAX variant against the library's loss, metrics and gradients first")
  return ap.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.xla_flags:
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + ARGS.xla_flags).strip()
if ARGS is not None and ARGS.preset != "cpu":
  # torch and JAX share the GPU: JAX must not grab 75% of it up front (the torch step runs first, then frees).
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from machine import describe_machine, load_average  # noqa: E402  (benchmarks/machine.py)

from pplx_jax.core.model_config import ModelConfig  # noqa: E402
from pplx_jax.models import attention as attn_lib  # noqa: E402
from pplx_jax.models import encoder  # noqa: E402
from pplx_jax.objectives import diffusion  # noqa: E402
from pplx_jax.stages import flops as flops_lib  # noqa: E402
from pplx_jax.stages.optimizer import default_config as optimizer_config  # noqa: E402
from pplx_jax.stages.optimizer import global_norm, make_optimizer  # noqa: E402

try:
  import torch
  import transformers
  HAVE_TORCH = True
except Exception:  # pragma: no cover - the GPU image may lack torch
  torch = transformers = None
  HAVE_TORCH = False

MASK_ID_FROM_END = 1  # mask id = vocab - 1 (an id the random data never uses)
TOTAL_STEPS = 100_000  # for the LR schedule only


# ----------------------------------------------------------------------------------------------------------------
# JAX variants: the pre-optimisation versions of the library's pieces (to measure each change) and candidates


def seqlen_attention(q, k, v, segment_ids, causal):
  """jax.nn.dot_product_attention with per-row lengths: cuDNN's fused (flash) kernel on GPU, XLA elsewhere.
  Equals the segment mask for rows holding one right-padded document (the benchmark's batches); packed rows need
  the library's segment masking."""
  lengths = jnp.sum(segment_ids > 0, axis=1).astype(jnp.int32)
  impl = "cudnn" if jax.default_backend() == "gpu" else "xla"
  return jax.nn.dot_product_attention(q, k, v, is_causal=causal, query_seq_lengths=lengths,
                                      key_value_seq_lengths=lengths, implementation=impl)


def grouped_attention(q, k, v, segment_ids, causal):
  """The library's XLA attention before the GQA fold (a separate query-group axis between batch and rows): kept to
  measure what the fold gained."""
  b, s, n, h = q.shape
  kv = k.shape[2]
  g = n // kv
  qg = q.reshape(b, s, kv, g, h)
  scores = jnp.einsum("bqkgh,bskh->bkgqs", qg, k, preferred_element_type=jnp.float32) * (h ** -0.5)
  mask = attn_lib.attention_mask(segment_ids, causal)[:, :, None]  # [B, 1, 1, S, S]
  scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum("bkgqs,bskh->bqkgh", probs, v)
  return out.reshape(b, s, n, h)


def bsd_decoder_layer(p, x, cos, sin, segment_ids, cfg):
  """qwen3.decoder_layer before flattening the tokens: [B, S, D] einsums, whose weight gradients contract two dims
  (b, s) — kept to measure what the flattening gained."""
  from pplx_jax.models.encoder import (
    apply_rope,
    checkpoint_name,
    constrain,
    rms_norm,
    to_dtype,
  )
  cdt = to_dtype(cfg.compute_dtype)
  w = lambda name: p[name].astype(cdt)
  h = rms_norm(x, p["input_layernorm"], cfg.rms_norm_eps)
  q = jnp.einsum("bsd,dnh->bsnh", h, w("q_proj"))
  k = jnp.einsum("bsd,dkh->bskh", h, w("k_proj"))
  v = jnp.einsum("bsd,dkh->bskh", h, w("v_proj"))
  q = apply_rope(rms_norm(q, p["q_norm"], cfg.rms_norm_eps), cos, sin)
  k = apply_rope(rms_norm(k, p["k_norm"], cfg.rms_norm_eps), cos, sin)
  a = attn_lib.dot_product_attention(q, k, v, segment_ids, causal=cfg.causal, impl=cfg.attention_impl)
  a = checkpoint_name(a, "attn_out")
  x = x + jnp.einsum("bsnh,nhd->bsd", a, w("o_proj"))
  h = rms_norm(x, p["post_attention_layernorm"], cfg.rms_norm_eps)
  mlp = jax.nn.silu(jnp.einsum("bsd,df->bsf", h, w("gate_proj"))) * jnp.einsum("bsd,df->bsf", h, w("up_proj"))
  return constrain(x + jnp.einsum("bsf,fd->bsd", mlp, w("down_proj")), ("act_batch", "act_length", "act_embed"))


def flatcat_decoder_layer(p, x, cos, sin, segment_ids, cfg):
  """flat_decoder_layer with q|k|v and gate|up concatenated into one matmul each (fewer, larger GEMMs; the weights
  are concatenated per step, their gradients split)."""
  from pplx_jax.models.encoder import (
    apply_rope,
    checkpoint_name,
    constrain,
    rms_norm,
    to_dtype,
  )
  cdt = to_dtype(cfg.compute_dtype)
  w = lambda name: p[name].astype(cdt)
  b, s, d = x.shape
  t = b * s
  nq, nk, hd = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.head_dim
  h = rms_norm(x, p["input_layernorm"], cfg.rms_norm_eps).reshape(t, d)
  wqkv = jnp.concatenate([w("q_proj").reshape(d, nq), w("k_proj").reshape(d, nk), w("v_proj").reshape(d, nk)], 1)
  qkv = h @ wqkv
  q = qkv[:, :nq].reshape(b, s, cfg.num_heads, hd)
  k = qkv[:, nq:nq + nk].reshape(b, s, cfg.num_kv_heads, hd)
  v = qkv[:, nq + nk:].reshape(b, s, cfg.num_kv_heads, hd)
  q = apply_rope(rms_norm(q, p["q_norm"], cfg.rms_norm_eps), cos, sin)
  k = apply_rope(rms_norm(k, p["k_norm"], cfg.rms_norm_eps), cos, sin)
  a = attn_lib.dot_product_attention(q, k, v, segment_ids, causal=cfg.causal, impl=cfg.attention_impl)
  a = checkpoint_name(a, "attn_out")
  o = a.reshape(t, nq) @ w("o_proj").reshape(nq, d)
  x = constrain(x + o.reshape(b, s, d), ("act_batch", "act_length", "act_embed"))
  h = rms_norm(x, p["post_attention_layernorm"], cfg.rms_norm_eps).reshape(t, d)
  f = cfg.mlp_dim
  gu = h @ jnp.concatenate([w("gate_proj"), w("up_proj")], axis=1)
  mlp = jax.nn.silu(gu[:, :f]) * gu[:, f:]
  x = x + (mlp @ w("down_proj")).reshape(b, s, d)
  return constrain(x, ("act_batch", "act_length", "act_embed"))


_library_loss = diffusion.masked_diffusion_loss


def plain_masked_diffusion_loss(*args, **kw):
  """The library loss with the checkpointed chunks instead of the fused linear CE (what evaluation uses)."""
  return _library_loss(*args, **dict(kw, fused=False))


class _Unstacked:
  """A stacked [L, ...] parameter split once with lax.unstack: `[i]` returns layer i. Indexing the stacked array
  per layer (the library's unrolled path) slices it L times, and the gradient of each slice is padded back to
  [L, ...] and summed (L full-size buffers); the gradient of one unstack is a single concatenate."""

  def __init__(self, a):
    self.parts = jax.lax.unstack(a)

  def __getitem__(self, i):
    return self.parts[i]


_library_arrays = encoder.DecoderLayers.arrays


def _unstacked_arrays(self):
  return {k: _Unstacked(v) for k, v in _library_arrays(self).items()}


class patched:
  """Swap the library's attention / loss for a variant while a step is traced (jit traces on the first call)."""

  def __init__(self, attn: str, ce: str, layer: str = "library", unstack: bool = False):
    self.attn, self.ce, self.layer, self.unstack = attn, ce, layer, unstack

  def __enter__(self):
    self._saved = (attn_lib._xla_attention, diffusion.masked_diffusion_loss, encoder.decoder_layer,
                   encoder.DecoderLayers.arrays)
    if self.unstack:  # only meaningful with scan_layers=False
      encoder.DecoderLayers.arrays = _unstacked_arrays
    if self.attn == "grouped":
      attn_lib._xla_attention = grouped_attention
    elif self.attn == "cudnn":
      attn_lib._xla_attention = seqlen_attention
    if self.ce == "plain":
      diffusion.masked_diffusion_loss = plain_masked_diffusion_loss
    if self.layer == "bsd":
      encoder.decoder_layer = bsd_decoder_layer
    elif self.layer == "flatcat":
      encoder.decoder_layer = flatcat_decoder_layer

  def __exit__(self, *exc):
    (attn_lib._xla_attention, diffusion.masked_diffusion_loss, encoder.decoder_layer,
     encoder.DecoderLayers.arrays) = self._saved


# ----------------------------------------------------------------------------------------------------------------
# The two steps


def model_config(shape, opts) -> ModelConfig:
  return ModelConfig(vocab_size=shape["vocab"], hidden_size=shape["hidden"], num_layers=shape["layers"],
                     num_heads=shape["heads"], num_kv_heads=shape["kv_heads"], head_dim=shape["head_dim"],
                     mlp_dim=shape["mlp"], compute_dtype=opts["dtype"], param_dtype="float32",
                     residual_dtype=opts.get("residual", "float32"),
                     remat=opts["remat"], scan_layers=bool(opts["scan"]), tie_embeddings=True,
                     attention="bidirectional")


def objective_config(shape, opts) -> diffusion.DiffusionConfig:
  # The stage's defaults (pretrain.default_objective_config) except random_length_prob: a truncated row would need
  # an explicit attention mask in the torch reference (a different SDPA path); in JAX it only changes masks.
  return diffusion.DiffusionConfig(mask_token_id=shape["vocab"] - MASK_ID_FROM_END, eps=1e-3,
                                   t_sampler="stratified", weighting="elbo", normalization="valid_tokens",
                                   shift=True, exclude_mask_logit=True, random_length_prob=0.0,
                                   ce_chunk_size=int(opts["ce_chunk"]))


def make_batch(shape, seed=0):
  rs = np.random.RandomState(seed)
  ids = rs.randint(0, shape["vocab"] - 16, size=(shape["batch"], shape["seq"])).astype(np.int32)
  seg = np.ones_like(ids)  # one document per row, no padding
  return {"input_ids": ids, "segment_ids": seg}


class JaxStep:
  """trainer.train's train_step (same structure), on one device."""

  def __init__(self, shape, opts, batch, seed=0):
    self.opts = dict(opts)
    self.cfg = model_config(shape, opts)
    self.obj = objective_config(shape, opts)
    model = encoder.create_model(self.cfg, seed=seed)
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    del model, state
    tx, schedule = make_optimizer(optimizer_config(), TOTAL_STEPS)
    opt_state = jax.jit(tx.init)(params)
    base_rng = jax.random.key(seed)
    obj = self.obj

    def train_step(params, opt_state, batch, step):
      rng = jax.random.fold_in(base_rng, step)

      def loss_fn(p):
        return diffusion.diffusion_loss(nnx.merge(graphdef, nnx.State(p)), batch, rng, obj)

      (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
      metrics = dict(metrics, loss=loss, grad_norm=global_norm(grads), lr=schedule(step))
      return params, opt_state, metrics

    self.num_params = int(sum(x.size for x in jax.tree.leaves(params)))
    self.params, self.opt_state = params, opt_state
    self.batch = {k: jnp.asarray(v) for k, v in batch.items()}
    self.step_idx = 0
    self._fn = jax.jit(train_step, donate_argnums=(0, 1))
    t = time.perf_counter()
    if opts.get("unstack") and opts["scan"]:
      raise ValueError("unstack=True needs scan=False")
    with patched(opts["attn"], opts["ce"], opts["layer"], bool(opts.get("unstack")) and not opts["scan"]):
      self._fn = self._fn.lower(self.params, self.opt_state, self.batch, jnp.asarray(0, jnp.int32)).compile()
    self.compile_s = time.perf_counter() - t

  def __call__(self) -> float:
    self.params, self.opt_state, metrics = self._fn(self.params, self.opt_state, self.batch,
                                                    jnp.asarray(self.step_idx, jnp.int32))
    self.step_idx += 1
    self.last_metrics = metrics
    return float(metrics["loss"])  # host read = sync, as the trainer does


class TorchStep:
  """The same step in torch + transformers (eager, SDPA attention)."""

  def __init__(self, shape, obj: diffusion.DiffusionConfig, batch, device="cpu", bf16=False, seed=0):
    from transformers import Qwen3Config, Qwen3Model
    torch.manual_seed(seed)
    self.device = torch.device(device)
    cfg = Qwen3Config(vocab_size=shape["vocab"], hidden_size=shape["hidden"], intermediate_size=shape["mlp"],
                      num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                      num_key_value_heads=shape["kv_heads"], head_dim=shape["head_dim"], rms_norm_eps=1e-6,
                      rope_theta=1_000_000.0, tie_word_embeddings=True, attention_bias=False, attention_dropout=0.0,
                      max_position_embeddings=max(40_960, shape["seq"]), is_causal=False, use_cache=False)
    cfg._attn_implementation = "sdpa"
    self.model = Qwen3Model(cfg).to(self.device).train()
    self.num_params = int(sum(p.numel() for p in self.model.parameters()))
    decay = [p for n, p in self.model.named_parameters() if p.ndim >= 2 and "embed_tokens" not in n]
    no_decay = [p for n, p in self.model.named_parameters() if not (p.ndim >= 2 and "embed_tokens" not in n)]
    oc = optimizer_config()
    self.peak_lr, self.warmup = float(oc.lr), int(oc.warmup_steps)
    groups = [dict(params=decay, weight_decay=float(oc.weight_decay)), dict(params=no_decay, weight_decay=0.0)]
    kw = dict(lr=self.peak_lr, betas=(float(oc.b1), float(oc.b2)), eps=float(oc.eps))
    try:  # the fused (single-kernel) AdamW: the fastest eager optimizer on CPU and GPU
      self.opt = torch.optim.AdamW(groups, fused=True, **kw)
      self.optimizer_impl = "fused"
    except (RuntimeError, TypeError):
      self.opt = torch.optim.AdamW(groups, foreach=True, **kw)
      self.optimizer_impl = "foreach"
    self.clip = float(oc.clip_norm)
    self.obj = obj
    self.bf16 = bf16
    self.ids = torch.as_tensor(batch["input_ids"], dtype=torch.long, device=self.device)
    self.seg = torch.as_tensor(batch["segment_ids"], dtype=torch.long, device=self.device)
    self.gen = torch.Generator(device=self.device)
    self.gen.manual_seed(seed)
    self.step_idx = 0

  def loss(self):
    o = self.obj
    ids, seg = self.ids, self.seg
    b, length = ids.shape
    valid = seg > 0
    first = torch.ones_like(valid[:, :1])
    starts = torch.cat([first, ~valid[:, :-1]], 1) | torch.cat([first, seg[:, 1:] != seg[:, :-1]], 1)
    maskable = valid & ~starts
    u = torch.rand((), generator=self.gen, device=self.device)
    t = torch.remainder(u + torch.arange(b, device=self.device, dtype=torch.float32) / b, 1.0)
    p = o.eps + (1.0 - o.eps) * t
    r = torch.rand((b, length), generator=self.gen, device=self.device)
    masked = (r < p[:, None]) & maskable
    noisy = torch.where(masked, torch.full_like(ids, o.mask_token_id), ids)
    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
      hidden = self.model(input_ids=noisy).last_hidden_state
      logits = torch.matmul(hidden, self.model.embed_tokens.weight.t().to(hidden.dtype))
    logits = logits.float()
    if o.exclude_mask_logit:
      logits[..., o.mask_token_id] = float("-inf")
    targets = torch.cat([ids[:, 1:], torch.zeros_like(ids[:, :1])], 1)
    score = torch.cat([masked[:, 1:] & valid[:, :-1], torch.zeros_like(masked[:, :1])], 1)
    ce = torch.nn.functional.cross_entropy(logits.reshape(b * length, -1), targets.reshape(-1), reduction="none")
    ce = torch.where(score.reshape(-1), ce, torch.zeros_like(ce)).reshape(b, length)
    w = 1.0 / p
    num_valid = valid.sum().float()
    loss = (ce * w[:, None]).sum() / num_valid.clamp(min=1.0)
    with torch.no_grad():
      nm = score.sum().float().clamp(min=1.0)
      metrics = dict(masked_ce=ce.sum() / nm, masked_acc=((logits.argmax(-1) == targets) & score).sum() / nm)
    return loss, metrics

  def __call__(self) -> float:
    lr = self.peak_lr * min(1.0, self.step_idx / max(self.warmup, 1))
    for g in self.opt.param_groups:
      g["lr"] = lr
    loss, _ = self.loss()
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip, foreach=True)
    self.opt.step()
    self.step_idx += 1
    return float(loss.item())


# ----------------------------------------------------------------------------------------------------------------
# Peaks and timing


def _best(fn, repeats):
  fn()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t)
  return best


class JaxMatmul:
  """One square matmul in JAX (a 'runner' for round_robin: timed between the train steps, under the same load)."""

  def __init__(self, n, dtype):
    self.n, self.flops = n, 2.0 * n**3
    self.a = jnp.asarray(np.random.RandomState(0).standard_normal((n, n)), jnp.dtype(dtype))
    # 16-bit: float32 accumulation and output, as the library's dots (models/precision.py)
    self.f = jax.jit(lambda x: jnp.dot(x, x, preferred_element_type=jnp.float32))
    self.f(self.a).block_until_ready()

  def __call__(self):
    self.f(self.a).block_until_ready()
    return float("nan")


class TorchMatmul:
  def __init__(self, n, device="cpu", dtype="float32"):
    self.n, self.flops = n, 2.0 * n**3
    self.device = torch.device(device)
    self.a = torch.randn(n, n, device=self.device, dtype=getattr(torch, dtype))

  def __call__(self):
    torch.matmul(self.a, self.a)
    if self.device.type == "cuda":
      torch.cuda.synchronize()
    return float("nan")


def matmul_peaks(sizes, dtype="float32", repeats=5, with_torch=True, device="cpu") -> dict:
  """Best achieved FLOP/s of square matmuls, JAX (and torch), over the given sizes."""
  out = {"jax": 0.0, "torch": None, "jax_by_n": {}, "torch_by_n": {}}
  for n in sizes:
    jm = JaxMatmul(n, dtype)
    out["jax_by_n"][n] = jm.flops / _best(jm, repeats)
    if with_torch:
      tm = TorchMatmul(n, device, dtype)
      out["torch_by_n"][n] = tm.flops / _best(tm, repeats)
  out["jax"] = max(out["jax_by_n"].values())
  if out["torch_by_n"]:
    out["torch"] = max(out["torch_by_n"].values())
  return out


def merge_peaks(a, b):
  out = dict(a)
  for k in ("jax", "torch"):
    vals = [v for v in (a.get(k), b.get(k)) if v]
    out[k] = max(vals) if vals else None
  for k in ("jax_by_n", "torch_by_n"):
    out[k] = {n: max(a[k].get(n, 0), b[k].get(n, 0)) for n in set(a[k]) | set(b[k])}
  return out


def round_robin(runners: dict, steps: int, warmup: int) -> dict:
  """One call of each runner in turn (so all see the same machine load); per-runner wall and process-CPU times
  after the warmup."""
  times = {k: [] for k in runners}
  cpu = {k: [] for k in runners}
  losses = {k: [] for k in runners}
  for i in range(warmup + steps):
    for name, run in runners.items():
      c = time.process_time()
      t = time.perf_counter()
      loss = run()
      dt = time.perf_counter() - t
      dc = time.process_time() - c
      losses[name].append(loss)
      if i >= warmup:
        times[name].append(dt)
        cpu[name].append(dc)
  return {k: dict(median_s=statistics.median(v), min_s=min(v), times_s=v, cpu_s=cpu[k],
                  cpu_min_s=min(cpu[k]), cpu_median_s=statistics.median(cpu[k]), losses=losses[k])
          for k, v in times.items()}


# ----------------------------------------------------------------------------------------------------------------
# Where time goes


def op_category(name: str) -> str:
  """XLA:CPU thunk name -> what it is (ynn_fusion = a dot fused by XLA's YNNPACK path)."""
  base = name.split(".")[0]
  if base.startswith("ynn_fusion") or base.startswith("dot") or base == "custom-call":
    return "dot (matmul)"
  if "transpose" in base or base.startswith("copy"):
    return "copy / transpose"
  if "exponential" in base or "reduce" in base or "select" in base:
    return "softmax / CE / select"
  if base.startswith("while") or base.startswith("conditional") or base.startswith("call"):
    return "control flow (loop bookkeeping)"
  if base.startswith("wrapped_broadcast") or "pad" in base or "dynamic" in base:
    return "stacking (broadcast, pad, dynamic slices)"
  if "fusion" in base or base.startswith("wrapped"):
    return "other elementwise fusions"
  return "other"


def profile_step(step, top: int = 12) -> str:
  """One step under jax.profiler; XLA op durations summed by category and the top ops (wall time, one thread's
  view: ops on the two cores overlap, so the sum can exceed the step)."""
  import collections
  import glob
  import gzip
  import tempfile

  step()  # compiled and warm
  with tempfile.TemporaryDirectory() as d:
    t = time.perf_counter()
    with jax.profiler.trace(d):
      step()
    wall = time.perf_counter() - t
    events = json.load(gzip.open(glob.glob(f"{d}/**/*.trace.json.gz", recursive=True)[0]))["traceEvents"]
  by_op, count = collections.Counter(), collections.Counter()
  for e in events:
    name = e.get("name", "")
    if e.get("ph") != "X" or name.startswith("$") or "::" in name or " " in name or "(" in name:
      continue  # python frames, executor spans, host reads
    by_op[name] += e["dur"] / 1e6
    count[name] += 1
  by_cat = collections.Counter()
  for name, sec in by_op.items():
    by_cat[op_category(name)] += sec
  total = sum(by_op.values()) or 1.0
  lines = [f"step {1e3 * wall:.0f} ms under the profiler; XLA ops {1e3 * total:.0f} ms in all", "",
           "| category | ms | share |", "|---|---:|---:|"]
  lines += [f"| {c} | {1e3 * sec:.0f} | {100 * sec / total:.0f}% |" for c, sec in by_cat.most_common()]
  lines += ["", "| op | calls | ms | share |", "|---|---:|---:|---:|"]
  lines += [f"| {n} | {count[n]} | {1e3 * sec:.0f} | {100 * sec / total:.1f}% |" for n, sec in by_op.most_common(top)]
  return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Main


def resolve_opts(args) -> dict:
  opts = dict(CPU_DEFAULTS if args.preset in CPU_PRESETS else GPU_DEFAULTS)
  if args.scan is not None:
    opts["scan"] = args.scan == "true"
  if args.unstack is not None:
    opts["unstack"] = args.unstack == "true"
  for k in ("remat", "attn", "ce", "layer", "dtype", "residual"):
    if getattr(args, k) is not None:
      opts[k] = getattr(args, k)
  if args.ce_chunk is not None:
    opts["ce_chunk"] = args.ce_chunk
  return opts


def resolve_shapes(args) -> list[dict]:
  if args.preset in CPU_PRESETS:
    shapes = [dict(s) for s in CPU_PRESETS[args.preset]]
    if args.shapes:
      keep = set(args.shapes.split(","))
      shapes = [s for s in shapes if s["name"] in keep]
      if not shapes:
        raise SystemExit(f"--shapes {args.shapes}: none of {[s['name'] for s in CPU_PRESETS[args.preset]]}")
  else:
    shapes = [dict(QWEN3_0_6B)]
  for s in shapes:
    for k in ("batch", "seq", "layers", "hidden", "vocab"):
      v = getattr(args, k)
      if v is not None:
        s[k] = v
        s["name"] += f"-{k}{v}"
  return shapes


def check_variant(shape, opts):
  """Loss, metrics and gradients of the chosen JAX variant (layer / attention / CE) against the library's own
  functions, on a small batch with two CE chunks."""
  small = dict(shape, batch=2)
  batch = {k: jnp.asarray(v) for k, v in make_batch(small).items()}
  cfg = model_config(small, dict(opts, remat="none"))
  obj = objective_config(small, dict(opts, ce_chunk=max(small["seq"] // 2, 1)))
  graphdef, state = nnx.split(encoder.create_model(cfg))
  params = nnx.to_pure_dict(state)
  rng = jax.random.key(3)
  outs = {}
  for name, variant in (("library", ("library", "fused", "library")),
                        ("variant", (opts["attn"], opts["ce"], opts["layer"]))):
    with patched(*variant):
      f = jax.jit(jax.value_and_grad(
          lambda p: diffusion.diffusion_loss(nnx.merge(graphdef, nnx.State(p)), batch, rng, obj), has_aux=True))
      outs[name] = f(params)
  (l1, m1), g1 = outs["library"]
  (l2, m2), g2 = outs["variant"]
  gerr = max(float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(a)) + 1e-12))
             for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)))
  merr = max(abs(float(m1[k]) - float(m2[k])) / max(abs(float(m1[k])), 1e-6) for k in m1)
  print(f"[check] attn={opts['attn']} ce={opts['ce']} layer={opts['layer']} vs the library: loss {float(l1):.6f} vs "
        f"{float(l2):.6f}, max rel metric diff {merr:.2e}, max rel grad diff {gerr:.2e}", flush=True)
  # bfloat16: the variants round in a different order (max |diff| / max |grad| of a few bf16 ulps)
  tol, gtol = (2e-2, 6e-2) if opts["dtype"] == "bfloat16" else (1e-4, 1e-4)
  if not (abs(float(l1) - float(l2)) <= tol * abs(float(l1)) and gerr <= gtol and merr <= tol):
    raise SystemExit("[check] the JAX variant does not match the library loss/gradients")


def fmt(x, spec):
  return "-" if x is None else format(x, spec)


def pct(frac):
  return "-" if not frac else f"{100 * frac:.0f}%"


def main(args):
  gpu = jax.default_backend() != "cpu"
  if args.preset == "qwen3-0.6b" and not gpu:
    print("[warn] preset qwen3-0.6b on a CPU: use --layers/--seq/--batch/--vocab to shrink it", flush=True)
  steps = args.steps if args.steps is not None else (10 if gpu else 5)
  warmup = args.warmup if args.warmup is not None else (2 if gpu else 1)
  opts = resolve_opts(args)
  shapes = resolve_shapes(args)
  use_torch = HAVE_TORCH and not args.no_torch and (not gpu or torch.cuda.is_available())
  if HAVE_TORCH:
    torch.set_num_threads(os.cpu_count() or 1)
  device = "cuda" if gpu else "cpu"
  sizes = [int(n) for n in (args.matmul_n or ("8192" if gpu else "1024,2048")).split(",") if n]
  dtypes = [d for d in args.dtypes.split(",") if d] or [opts["dtype"]]
  # the peak of the precision each row computes in (CPU: float32 and bf16 rows; GPU: the spec sheet's bf16)
  peak_of = lambda dt: dt if (dt == "bfloat16" or not gpu) else "float32"

  print(f"# machine: {describe_machine()}; jax {jax.__version__} ({jax.default_backend()})"
        + (f", torch {torch.__version__} ({torch.get_num_threads()} threads), transformers {transformers.__version__}"
           if HAVE_TORCH else ", torch: not installed")
        + f"; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; load average {load_average()}", flush=True)
  print(f"# jax step: {opts}; {steps} timed steps after {warmup} warmup, "
        + ("torch then JAX" if (gpu or args.sequential) else "round-robin"), flush=True)
  if args.check:
    check_variant(shapes[0], opts)

  best_peaks = {dt: matmul_peaks(sizes, peak_of(dt), with_torch=use_torch, device=device) for dt in dtypes}
  spec_peak = flops_lib.device_peak_flops() if gpu else None
  results = []
  sequential = gpu or args.sequential
  base_opts = opts
  for shape, dtype in [(sh, dt) for sh in (shapes[:1] if args.sweep else shapes) for dt in dtypes]:
    opts = dict(base_opts, dtype=dtype)
    peak_dtype = peak_of(dtype)
    batch = make_batch(shape)
    variants = [("jax", {})]
    if args.sweep:
      keep = [int(i) for i in args.sweep_variants.split(",") if i] or range(len(SWEEP))
      variants = [SWEEP[i] for i in keep]
    expected_params = model_config(shape, opts).num_params()
    t0 = time.perf_counter()
    timing, runners, info, notes = {}, {}, {}, []

    def add_torch():
      ts = TorchStep(shape, objective_config(shape, opts), batch, device=device, bf16=opts["dtype"] == "bfloat16")
      assert ts.num_params == expected_params, (f"parameter counts differ: jax {expected_params} vs torch "
                                                f"{ts.num_params}")
      info["torch"] = dict(optimizer=ts.optimizer_impl)
      return {"torch": ts, "torch matmul": TorchMatmul(max(sizes), device, peak_dtype)}

    if use_torch and sequential:
      # GPU: torch first, on its own (no load to share; both would not fit in memory together), then freed.
      try:
        tr = add_torch()
        timing.update(round_robin(tr, steps, warmup))
        runners.update({k: v for k, v in tr.items() if k.endswith("matmul")})
      except torch.cuda.OutOfMemoryError as e:  # pragma: no cover - GPU only
        notes.append(f"torch: out of memory at batch {shape['batch']} ({str(e).splitlines()[0][:120]})")
        print(f"[torch] {notes[-1]}", flush=True)
      tr = None
      import gc
      gc.collect()
      if gpu:
        torch.cuda.empty_cache()
    for label, change in variants:
      o = dict(opts, **change)
      js = JaxStep(shape, o, batch)
      assert js.num_params == expected_params, (js.num_params, expected_params)
      runners[label] = js
      info[label] = dict(opts=o, compile_s=js.compile_s)
      print(f"[compile] {shape['name']} {dtype} {label}: {js.compile_s:.1f}s", flush=True)
    first = runners[variants[0][0]]
    profile = profile_step(first) if args.profile else None
    if use_torch and not sequential:
      runners.update(add_torch())  # CPU: interleaved with the JAX steps, so both see the same machine load
    # the matmul peak, timed between the steps (same load as the steps); the best-of peaks are printed as well
    runners["jax matmul"] = JaxMatmul(max(sizes), peak_dtype)
    timing.update(round_robin({k: v for k, v in runners.items() if k not in timing}, steps, warmup))
    flops_step = flops_lib.train_flops_per_token(first.cfg, shape["seq"], lm_head=True) * shape["batch"] * shape["seq"]
    row = dict(shape=shape, dtype=dtype, num_params=first.num_params, model_flops_per_step=flops_step, notes=notes,
               profile=profile,
               load_average=load_average(), wall_s=time.perf_counter() - t0, runs={}, matmul={})
    for name, tm in timing.items():
      if name.endswith("matmul"):
        row["matmul"][name.split()[0]] = dict(tm, n=runners[name].n, flops_per_s=runners[name].flops / tm["median_s"])
        continue
      sps = 1.0 / tm["median_s"]
      row["runs"][name] = dict(tm, steps_per_s=sps, flops_per_s=flops_step * sps, **info.get(name, {}))
    jpeak = spec_peak or row["matmul"]["jax"]["flops_per_s"]
    tpeak = spec_peak or (row["matmul"]["torch"]["flops_per_s"] if "torch" in row["matmul"] else None)
    for name, r in row["runs"].items():
      pk = tpeak if name == "torch" else jpeak
      r["fraction_of_peak"] = r["flops_per_s"] / pk if pk else None
    results.append(row)
    j = row["runs"][variants[0][0]]
    t = row["runs"].get("torch")
    mm_txt = ", ".join(f"{k} {v['flops_per_s'] / 1e9:.1f}" for k, v in row["matmul"].items())
    print(f"[{shape['name']} {dtype}] " + ", ".join(f"{k}: {1e3 * v['median_s']:.0f} ms/step" for k, v in row["runs"].items())
          + (f"; ratio jax/torch {j['steps_per_s'] / t['steps_per_s']:.2f}" if t else "")
          + f"; matmul {mm_txt} GFLOP/s; load {row['load_average']}", flush=True)
    runners = timing = first = js = None  # free this row's steps before the next row builds its own
    import gc
    gc.collect()

  best_peaks = {dt: merge_peaks(best_peaks[dt], matmul_peaks(sizes, peak_of(dt), with_torch=use_torch, device=device))
                for dt in dtypes}
  peak_name = "spec peak (MFU)" if spec_peak else "matmul peak"
  lines = []
  if args.sweep:
    row = results[0]
    t = row["runs"].get("torch")
    lines.append(f"JAX variants on {row['shape']['name']} (round-robin, {steps} steps each):\n")
    lines.append(f"| variant | wall ms/step (median) | wall ms/step (min) | CPU ms/step (min) | jax/torch (median) | "
                 f"TFLOP/s (median) | % of {peak_name} |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in row["runs"].items():
      vs = f"{r['steps_per_s'] / t['steps_per_s']:.2f}" if t else "-"
      lines.append(f"| {name} | {1e3 * r['median_s']:.0f} | {1e3 * r['min_s']:.0f} | {1e3 * r['cpu_min_s']:.0f} | "
                   f"{vs} | "
                   f"{r['flops_per_s'] / 1e12:.4f} | "
                   f"{pct(r['fraction_of_peak'])} |")
  else:
    lines.append(f"| shape | dtype | params | jax steps/s | torch steps/s | ratio jax/torch | jax TFLOP/s | "
                 f"jax % of {peak_name} "
                 f"| torch TFLOP/s | torch % of {peak_name} | matmul peak jax / torch (TFLOP/s) |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in results:
      j, t = row["runs"]["jax"], row["runs"].get("torch")
      mm = row["matmul"]
      lines.append(
          f"| {row['shape']['name']} | {row['dtype']} | {row['num_params'] / 1e6:.1f}M | {j['steps_per_s']:.3f} | "
          f"{fmt(t and t['steps_per_s'], '.3f')} | {fmt(t and j['steps_per_s'] / t['steps_per_s'], '.2f')} | "
          f"{j['flops_per_s'] / 1e12:.4f} | {pct(j['fraction_of_peak'])} | "
          f"{fmt(t and t['flops_per_s'] / 1e12, '.4f')} | "
          f"{pct(t and t['fraction_of_peak'])} | "
          f"{mm['jax']['flops_per_s'] / 1e12:.4f} / "
          f"{fmt(mm.get('torch') and mm['torch']['flops_per_s'] / 1e12, '.4f')} |")
    by = {(r["shape"]["name"], r["dtype"]): r for r in results}
    for name in dict.fromkeys(r["shape"]["name"] for r in results):
      lo, hi = by.get((name, "bfloat16")), by.get((name, "float32"))
      if lo and hi:
        sp = lambda r, k: r["runs"][k]["steps_per_s"] if k in r["runs"] else None
        tj, tt = sp(lo, "jax") / sp(hi, "jax"), (sp(lo, "torch") / sp(hi, "torch") if sp(hi, "torch") else None)
        lines.append(f"\n{name}: bf16 / float32 steps/s: jax {tj:.2f}x" + (f", torch {tt:.2f}x" if tt else ""))
  for row in results:
    if row.get("profile"):
      lines.append(f"\nper-op profile of one JAX step, {row['shape']['name']} {row['dtype']}:\n")
      lines.append(row["profile"])
  print()
  print("\n".join(lines))
  print()
  for dt in dtypes:
    bp = best_peaks[dt]
    print(f"matmul peak = median of one {peak_of(dt)} {max(sizes)}x{max(sizes)} matmul timed between the steps; "
          f"best-of peaks before/after (n={sizes}): JAX {bp['jax'] / 1e12:.4f} TFLOP/s"
          + (f", torch {bp['torch'] / 1e12:.4f} TFLOP/s" if bp.get("torch") else "")
          + (f"; spec peak {spec_peak / 1e12:.0f} TFLOP/s" if spec_peak else ""))
  print(f"load average at the end: {load_average()}")

  if args.json:
    out = dict(machine=describe_machine(), backend=jax.default_backend(), jax=jax.__version__,
               torch=torch.__version__ if HAVE_TORCH else None, xla_flags=os.environ.get("XLA_FLAGS", ""),
               preset=args.preset, steps=steps, warmup=warmup, jax_opts=base_opts, dtypes=dtypes,
               best_matmul_peak=best_peaks,
               spec_peak=spec_peak, results=results, table="\n".join(lines), sweep=bool(args.sweep))
    with open(args.json, "w") as f:
      json.dump(out, f, indent=1, default=str)
    print(f"wrote {args.json}")


if __name__ == "__main__":
  main(ARGS)
