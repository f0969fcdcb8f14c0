"""pplx-jax: the pplx-embed training recipe (diffusion-pretrained dense and contextual embeddings) in JAX/Flax."""


def _skip_absent_tpu() -> None:
  # libtpu (the `tpu-aot` extra, for `pplx-jax aot`) makes every JAX process look for TPU chips and print a page of
  # TPU-initialisation errors on machines without one. Where there is no Google PCI device (TPU chips are) and no
  # GPU plugin, use the CPU backend only; compiling for TPU topologies (jax.experimental.topologies) does not need
  # the TPU backend. Decided without importing jax, so `pplx_jax.core.distributed` can still probe a coordinator first.
  import glob
  import importlib.util
  import os
  import sys
  if "JAX_PLATFORMS" in os.environ or importlib.util.find_spec("libtpu") is None:
    return
  if any(importlib.util.find_spec(m) for m in ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm7_plugin")):
    return
  for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
    try:
      if open(vendor).read().strip() == "0x1ae0":  # Google (jax._src.hardware_utils counts TPU chips by it)
        return
    except OSError:
      continue
  if "jax" in sys.modules:
    sys.modules["jax"].config.update("jax_platforms", "cpu")
  else:
    os.environ["JAX_PLATFORMS"] = "cpu"


_skip_absent_tpu()
