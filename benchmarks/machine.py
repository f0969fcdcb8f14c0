"""What the benchmark scripts print about the machine they ran on (imported by each script from its own folder)."""

from __future__ import annotations

import os
import platform

import jax


def describe_machine() -> str:
  if jax.default_backend() != "cpu":
    dev = jax.devices()[0]
    return f"{dev.device_kind} ({jax.default_backend()})"
  model = ""
  try:
    with open("/proc/cpuinfo") as f:
      model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
  except OSError:
    pass
  return f"CPU {model or platform.processor()} x{os.cpu_count()} cores"


def load_average() -> str:
  try:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())
  except OSError:
    return "n/a"
