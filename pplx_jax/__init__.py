"""pplx-jax: the pplx-embed training recipe (diffusion-pretrained dense and contextual embeddings) in JAX/Flax."""


def _skip_absent_tpu() -> None:
  # libtpu (the `tpu-aot` extra, for `pplx-jax aot`) makes every JAX process look for TPU chips and print a page of
  # TPU-initialisation errors on machines without one. Where there is no chip and no GPU plugin, use the CPU
  # backend only; compiling for TPU topologies (jax.experimental.topologies) does not need the TPU backend.
  import importlib.util
  import os
  if "JAX_PLATFORMS" in os.environ or importlib.util.find_spec("libtpu") is None:
    return
  if any(importlib.util.find_spec(m) for m in ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm7_plugin")):
    return
  from pplx_jax.distributed import _tpu_chips
  if _tpu_chips() == 0:
    import jax
    jax.config.update("jax_platforms", "cpu")


_skip_absent_tpu()
