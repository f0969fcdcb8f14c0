"""With libtpu installed (the `tpu-aot` extra) but no TPU chip, importing pplx_jax keeps JAX on the CPU quietly."""

import os
import subprocess
import sys


def test_no_tpu_noise_without_a_chip():
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  out = subprocess.run([sys.executable, "-c", "import pplx_jax, jax; print(jax.default_backend())"],
                       capture_output=True, text=True, env=env, timeout=120)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == "cpu"
  assert "TPU" not in out.stderr, out.stderr
