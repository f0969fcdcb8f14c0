"""Stage 3a of the paper (§4.2): contextual training, which produces pplx-embed-context (a Task for the trainer).

A batch holds N (document, query) pairs, each document padded to C chunks. One bidirectional pass over each
document (documents always fit the window in training: `data.max_chunks` chunks of at most `data.chunk_len`
tokens) gives, from the same hidden states:

* chunk embeddings c [N, C, D]: the float32 mean of each chunk's tokens, separators excluded (late chunking);
* the document embedding d [N, D]: the mean over all the document's chunk tokens, separators excluded. The paper
  does not say how d is formed; excluding separators makes d the token-weighted average of the chunk embeddings,
  a vector in the chunks' own space, and independent of how many separators the chunking produced;
* queries q [N, D] in their own pass, mean pooled.

All three go through int8 QAT (`int8_ste`, as in the pair stage). The loss is `contextual.contextual_objective`:
L_ctx = β L_global + (1 - β) L_local with α = 0.2, β = `beta_schedule(step, train.steps)` (cosine 0.2 -> 0.5). The
trainer's `task.loss` does not receive the step, so the data iterator stamps every batch with its own position
(`step` [N], the number of batches served before it): saved with the iterator state, hence deterministic and
exact on resume. Evaluation: ConTEB protocol on held-out documents, late chunking vs each chunk alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

from pplx_jax.core.config import ConfigError
from pplx_jax.core.model_config import ModelConfig
from pplx_jax.core.sharding import constrain
from pplx_jax.core.tokenizers import load_tokenizer
from pplx_jax.data.loader import StepStamped
from pplx_jax.models import late_chunking as lc
from pplx_jax.models import pooling, quantize
from pplx_jax.objectives import contextual as ctx_obj
from pplx_jax.objectives.contrastive import embed
from pplx_jax.stages import flops as flops_lib
from pplx_jax.stages import sources


def document_embedding(hidden: jax.Array, spans: jax.Array) -> jax.Array:
  """Mean of the final hidden states over every chunk token (span id > 0; separators and padding excluded)."""
  return pooling.mean_pool(hidden, (spans > 0).astype(jnp.int32))


def late_chunk_towers(model, batch, quantization: str, num_chunks: int) -> dict[str, jax.Array]:
  """{"q": [N, D], "c": [N, C, D], "d": [N, D]} from one pass over the documents and one over the queries."""
  hidden = model(batch["c_ids"], batch["c_mask"])
  c = lc.chunk_means(hidden, batch["c_mask"], batch["c_spans"], num_chunks)
  spans = batch["c_spans"] * batch["c_mask"]  # a stray span id on padding must not pool a pad state
  d = constrain(document_embedding(hidden, spans), ("act_batch", None))
  if quantization == "int8":
    c, d = quantize.int8_ste(c), quantize.int8_ste(d)
  return {"q": embed(model, batch["q_ids"], batch["q_mask"], quantization), "c": c, "d": d}


class ContextualTask:

  def __init__(self, cfg: ml_collections.ConfigDict, model_cfg: ModelConfig, tokenizer_dir: Path):
    from pplx_jax.data import prepared
    from pplx_jax.inference.contextual import separator_id
    self.cfg, self.model_cfg = cfg, model_cfg
    self.tokenizer = load_tokenizer(tokenizer_dir)
    self.sep_id = separator_id(self.tokenizer)
    obj = cfg.objective
    self.quantize = str(obj.quantize)
    if self.quantize not in ("int8", "none"):
      raise ConfigError(f"objective.quantize={self.quantize!r} is not 'int8' or 'none'")
    if not 0.0 <= float(obj.alpha) <= 1.0:
      raise ConfigError(f"objective.alpha={obj.alpha} must be in [0, 1]")
    margin = None if float(obj.margin) < 0 else float(obj.margin)
    self.objective = ctx_obj.contextual_objective(float(obj.temperature), alpha=float(obj.alpha), margin=margin,
                                                  use_qq=bool(obj.use_qq),
                                                  mask_duplicate_chunks=bool(obj.mask_duplicate_chunks))
    self.beta = (float(obj.beta_start), float(obj.beta_end))
    self.total_steps = int(cfg.train.steps)
    data = cfg.data
    self.num_chunks = int(data.max_chunks)
    self.doc_len = self.num_chunks * (int(data.chunk_len) + 1) - 1
    self.sources = [sources.dataset_dir("contextual", str(s), data) for s in data.sources]
    self.train_splits = [prepared.load_split(d, "train") for d in self.sources]
    self._eval_cache = None

  # ---- data ----

  def train_data(self, per_process_batch: int, shard_index: int, shard_count: int):
    from pplx_jax.stages.contextual.data import ContextualPipeline
    data = self.cfg.data
    weights = [float(w) for w in data.weights] or None
    if weights and len(weights) != len(self.sources):
      raise ConfigError(f"data.weights has {len(weights)} entries for {len(self.sources)} sources")
    return StepStamped(ContextualPipeline(
        self.train_splits, self.tokenizer, per_process_batch, sep_id=self.sep_id, weights=weights,
        query_len=int(data.query_len), chunk_len=int(data.chunk_len), max_chunks=self.num_chunks,
        seed=int(data.shuffle_seed), shard_index=shard_index, shard_count=shard_count))

  # ---- loss ----

  def loss(self, model, batch, rng):
    del rng
    embs = late_chunk_towers(model, batch, self.quantize, self.num_chunks)
    step = jnp.max(batch["step"])  # every row carries the same step
    beta = ctx_obj.beta_schedule(step, self.total_steps, *self.beta)
    return self.objective(embs, dict(batch, beta=beta))

  def tokens_per_step(self, global_batch: int) -> int:
    return global_batch * (int(self.cfg.data.query_len) + self.doc_len)

  def flops_per_step(self, model_cfg: ModelConfig, global_batch: int) -> float:
    q = int(self.cfg.data.query_len)
    per_q = flops_lib.train_flops_per_token(model_cfg, q, False) * q
    per_d = flops_lib.train_flops_per_token(model_cfg, self.doc_len, False) * self.doc_len
    return global_batch * (per_q + per_d)

  # ---- evaluation ----

  def evaluate(self, model_fn: Callable, step: int) -> dict[str, float]:
    """ConTEB protocol: nDCG@k etc. of late-chunked vs chunk-alone embeddings, per dtype."""
    from pplx_jax.eval import contextual as contextual_eval
    queries, docs, qrels = self.eval_set()
    ev = self.cfg.eval
    mesh = jax.sharding.get_abstract_mesh()
    multiple = 1 if mesh is None or mesh.empty else jax.device_count()
    dims = tuple(None if int(x) <= 0 else int(x) for x in ev.dims)
    out = contextual_eval.evaluate_with_model(model_fn(), self.tokenizer, queries, docs, qrels, tuple(ev.dtypes), dims,
                                              tuple(ev.ks), max_length=self.doc_len, multiple=multiple)
    return {f"eval/{k}": float(v) for k, v in out.items()}

  def eval_set(self):
    if self._eval_cache is None:
      from pplx_jax.stages.contextual import evalset as ctx_evalset
      ev, data = self.cfg.eval, self.cfg.data
      kw = dict(max_docs=int(ev.max_docs) if int(ev.max_docs) > 0 else None,
                max_queries=int(ev.max_queries) if int(ev.max_queries) > 0 else None)
      if ev.data == "wordnet":
        kw.update(validation_fraction=float(data.validation_fraction), seed=int(data.split_seed))
      self._eval_cache = ctx_evalset.load_retrieval_set(str(ev.data), "validation", **kw)
    return self._eval_cache


def default_objective_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      temperature=0.02, alpha=0.2, beta_start=0.2, beta_end=0.5, margin=0.1, use_qq=True, quantize="int8",
      mask_duplicate_chunks=False))


def default_data_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      sources=("wordnet",), weights=(), dir="runs/data", tokenizer="", query_len=32, chunk_len=32, max_chunks=8,
      validation_fraction=0.05, split_seed=0, shuffle_seed=0,
      wordnet_limit=0))  # source "wordnet": only the first N synsets' documents (quick runs and tests); 0 = all


def default_eval_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      data="wordnet", max_docs=300, max_queries=-1, dtypes=("float32", "int8", "binary"), dims=(-1,), ks=(1, 10, 100)))
