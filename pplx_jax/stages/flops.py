"""Analytic model FLOPs (XLA's cost analysis counts a scanned layer once, so it cannot be used for MFU).

Conventions (design.md): full bidirectional attention (no causal halving), the LM head counted in the diffusion
stage, a training step = 3 x forward (forward + 2 x backward). Rematerialisation and GradCache re-encodes are extra
*hardware* FLOPs, not model FLOPs, so they do not count toward MFU.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from pplx_jax.core.model_config import ModelConfig


def forward_flops_per_token(cfg: ModelConfig, seq_len: int, lm_head: bool) -> float:
  d, h, kv, hd, f = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
  proj = 2 * d * (h * hd + 2 * kv * hd) + 2 * h * hd * d  # q, k, v, o
  attn = 2 * 2 * seq_len * h * hd  # QK^T and PV over every key of the (bidirectional) row
  mlp = 2 * 3 * d * f
  total = cfg.num_layers * (proj + attn + mlp)
  if lm_head:
    total += 2 * d * cfg.vocab_size
  return float(total)


def train_flops_per_token(cfg: ModelConfig, seq_len: int, lm_head: bool) -> float:
  return 3.0 * forward_flops_per_token(cfg, seq_len, lm_head)


# Dense bf16 peak per chip, from the vendors' spec sheets (no sparsity).
PEAK_FLOPS = {
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v5": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12, "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12,
}


def device_peak_flops(device=None) -> float | None:
  """Spec-sheet peak of the accelerator, or None on CPUs (measure one with `measure_matmul_peak`)."""
  kind = (device or jax.devices()[0]).device_kind
  for name, peak in PEAK_FLOPS.items():
    if kind.startswith(name):
      return peak
  return None


def measure_matmul_peak(n: int = 1024, dtype=jnp.float32, repeats: int = 10) -> float:
  """Achieved FLOP/s of a square matmul on the default device in `dtype` (the model's compute dtype): the CPU's
  practical peak. Reduced precision accumulates in float32, the fastest path on CPUs (design.md: a bf16 dot with a
  float32 result runs ~5x a float32 one here), so a bf16 model is never measured against the float32 rate."""
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda x: jnp.dot(x, x, preferred_element_type=jnp.float32))
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  # A machine's peak does not fall: keep the best seen in this process (a pipeline measures once per stage, and a
  # measurement taken while other processes hold the cores must not become the yardstick of a later, freer stage).
  key = (jax.devices()[0].platform, jnp.dtype(dtype).name)
  _PEAKS[key] = max(_PEAKS.get(key, 0.0), 2 * n**3 / best)
  return _PEAKS[key]


_PEAKS: dict[tuple[str, str], float] = {}
