"""The config class of a pplx-embed export (remote code, loaded with `trust_remote_code=True`).

Written by `pplx-jax convert --to pplx`, in the layout of the released perplexity-ai/pplx-embed-v1-* and
pplx-embed-context-v1-* models: a Qwen3 config under its own `model_type`, so stock transformers does not mistake
the bidirectional encoder for the causal Qwen3. `use_bidirectional_attention: true` in config.json is kept as an
ordinary attribute (Hugging Face text-embeddings-inference reads it).
"""

from transformers import Qwen3Config


class PPLXQwen3Config(Qwen3Config):
  model_type = "bidirectional_pplx_qwen3"
