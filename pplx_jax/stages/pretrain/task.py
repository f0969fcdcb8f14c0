"""Stage 1 of the paper: masked-diffusion continued pretraining (a Task for the shared trainer)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from pplx_jax.core.config import ConfigError
from pplx_jax.core.model_config import ModelConfig
from pplx_jax.core.tokenizers import load_tokenizer
from pplx_jax.objectives import diffusion
from pplx_jax.stages import flops as flops_lib
from pplx_jax.stages import sources

# The paper repurposes "an existing, rarely used token" of Qwen3's vocabulary; <|fim_pad|> never occurs in web text.
# Our own tokenizers carry a dedicated <|mask|> piece, preferred when present.
MASK_TOKEN_CANDIDATES = ("<|mask|>", "<|fim_pad|>")


def resolve_mask_token_id(objective: ml_collections.ConfigDict, tokenizer, model_cfg: ModelConfig) -> int:
  if int(objective.mask_token_id) >= 0:
    mask_id = int(objective.mask_token_id)
  else:
    names = [objective.mask_token] if objective.mask_token else list(MASK_TOKEN_CANDIDATES)
    ids = [tokenizer.token_to_id(n) for n in names]
    found = [i for i in ids if i is not None]
    if not found:
      raise ConfigError(f"objective: none of the mask tokens {names} is in the tokenizer; set "
                        f"objective.mask_token_id or objective.mask_token")
    mask_id = found[0]
  if mask_id >= model_cfg.vocab_size:
    raise ConfigError(f"objective.mask_token_id={mask_id} is outside model.vocab_size={model_cfg.vocab_size}")
  return mask_id


class PretrainTask:

  def __init__(self, cfg: ml_collections.ConfigDict, model_cfg: ModelConfig, tokenizer_dir: Path):
    from pplx_jax.data import prepared
    self.cfg, self.model_cfg = cfg, model_cfg
    self.tokenizer = load_tokenizer(tokenizer_dir)
    if self.tokenizer.vocab_size > model_cfg.vocab_size:
      raise ConfigError(f"tokenizer {tokenizer_dir} has {self.tokenizer.vocab_size} ids but model.vocab_size is "
                        f"{model_cfg.vocab_size}")
    self._init_loss(cfg, model_cfg, resolve_mask_token_id(cfg.objective, self.tokenizer, model_cfg))
    self.dataset_dir = sources.dataset_dir("pretrain", cfg.data.source, cfg.data)
    self.train_source = prepared.load_split(self.dataset_dir, "train")
    self.eval_source = prepared.load_split(self.dataset_dir, "validation")
    self._eval_fn = None

  def _init_loss(self, cfg: ml_collections.ConfigDict, model_cfg: ModelConfig, mask_token_id: int):
    obj = dict(cfg.objective.to_dict())
    obj.pop("mask_token", None)
    obj.pop("eval_ratios", None)
    obj["mask_token_id"] = mask_token_id
    if obj.get("vocab_limit", -1) in (-1, None):
      obj["vocab_limit"] = None
    self.objective = diffusion.DiffusionConfig.from_dict(obj)
    self.seq_len = int(cfg.data.seq_len)

  @classmethod
  def for_compile(cls, cfg: ml_collections.ConfigDict, model_cfg: ModelConfig) -> "PretrainTask":
    """The loss and batch layout without tokenizer or data, for compile checks (`pplx_jax.stages.aot`). The mask token's
    id changes values only, so an unset one stands in as the last vocabulary row."""
    task = cls.__new__(cls)
    task.cfg, task.model_cfg = cfg, model_cfg
    mask_id = int(cfg.objective.mask_token_id)
    task._init_loss(cfg, model_cfg, mask_id if mask_id >= 0 else model_cfg.vocab_size - 1)
    return task

  def batch_shapes(self, global_batch: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """{key: (shape, dtype)} of a global training batch (what `train_data` yields, all processes together)."""
    return {"input_ids": ((global_batch, self.seq_len), "int32"), "segment_ids": ((global_batch, self.seq_len), "int32")}

  def train_data(self, per_process_batch: int, shard_index: int, shard_count: int):
    from pplx_jax.stages.pretrain.data import PackedStreams, default_packing_streams
    gb = per_process_batch * shard_count
    streams = int(self.cfg.data.get("packing_streams", 0) or 0) or default_packing_streams(gb)
    try:
      return PackedStreams(self.train_source, self.tokenizer, self.seq_len, gb, streams,
                           seed=int(self.cfg.data.shuffle_seed), shard_index=shard_index, shard_count=shard_count)
    except ValueError as e:
      raise ConfigError(str(e)) from None

  def loss(self, model, batch, rng):
    return diffusion.diffusion_loss(model, batch, rng, self.objective)

  def tokens_per_step(self, global_batch: int) -> int:
    return global_batch * self.seq_len

  def flops_per_step(self, model_cfg: ModelConfig, global_batch: int) -> float:
    return flops_lib.train_flops_per_token(model_cfg, self.seq_len, lm_head=True) * global_batch * self.seq_len

  def evaluate(self, model_fn: Callable, step: int) -> dict[str, float]:
    """Masked-token CE / accuracy at fixed mask ratios on the same held-out rows every time."""
    from pplx_jax.stages.pretrain.data import eval_batches
    # Every process evaluates the same rows (inputs are taken as replicated), so the numbers do not depend on the
    # process count and process 0, which writes them, sees all of them.
    batches = list(eval_batches(self.eval_source, self.tokenizer, self.seq_len, int(self.cfg.train.eval_batch),
                                int(self.cfg.train.eval_batches), shard_index=0, shard_count=1))
    if not batches:
      return {}
    ratios = tuple(float(r) for r in self.cfg.objective.eval_ratios)
    model = model_fn()
    graphdef, state = nnx.split(model)
    if self._eval_fn is None:
      cfg = self.objective
      self._eval_fn = jax.jit(lambda s, b, rng: diffusion.eval_at_mask_ratios(nnx.merge(graphdef, s), b, rng, cfg,
                                                                              ratios))
    totals: dict[str, float] = {}
    counts: dict[str, float] = {}
    for i, b in enumerate(batches):
      rng = jax.random.key(10_000 + i)  # fixed masks: comparable across steps
      out = jax.device_get(self._eval_fn(state, {k: jnp.asarray(v) for k, v in b.items()}, rng))
      for r in ratios:
        tag = f"{r:g}"
        n = float(out[f"eval/num_masked@{tag}"])
        for kind in ("ce", "acc"):
          key = f"eval/{kind}@{tag}"
          totals[key] = totals.get(key, 0.0) + float(out[key]) * n
          counts[key] = counts.get(key, 0.0) + n
    return {k: totals[k] / max(counts[k], 1.0) for k in totals}


def default_objective_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      mask_token_id=-1, mask_token="", eps=1e-3, t_sampler="stratified", weighting="elbo",
      normalization="valid_tokens", shift=True, exclude_mask_logit=True, random_length_prob=0.01,
      ce_chunk_size=1024, vocab_limit=-1, eval_ratios=(0.15, 0.5, 0.85)))


def default_data_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      source="wordnet", dir="runs/data", tokenizer="", seq_len=128, validation_fraction=0.05, split_seed=0,
      shuffle_seed=0,
      wordnet_limit=0,  # source "wordnet": keep only the first N synsets (quick runs and tests); 0 = all
      # Packing streams (data.pipeline.PackedStreams): fixed, so the global batch is the same for any process count;
      # a multiple of the process count dividing the global batch. 0 = gcd(global batch, 64).
      packing_streams=0))
