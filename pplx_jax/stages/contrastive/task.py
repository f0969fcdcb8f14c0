"""Stages 2 and 3b of the paper: pair and triplet contrastive training (a Task for the shared trainer).

Embeddings are mean-pooled and int8-quantised inside training (straight-through, paper §3.2); losses run over the
global batch (every query sees every document, query and hard negative of every device and host); with
`objective.gradcache_chunks > 1` the encoder runs chunk by chunk (GradCache) so the global batch can exceed
activation memory. `data.phases` expresses the pair stage's three-phase curriculum as mixture weights per phase.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import ml_collections

from pplx_jax.core.config import ConfigError
from pplx_jax.core.model_config import ModelConfig
from pplx_jax.core.tokenizers import load_tokenizer
from pplx_jax.data.loader import PhasedPipeline
from pplx_jax.inference.embed import embed_with_model
from pplx_jax.objectives import contrastive, gradcache
from pplx_jax.stages import flops as flops_lib
from pplx_jax.stages import sources

# The pipeline names the hard-negative tower n_*; the objectives call it h.


class ContrastiveTask:

  def __init__(self, cfg: ml_collections.ConfigDict, model_cfg: ModelConfig, tokenizer_dir: Path):
    from pplx_jax.data import prepared
    self.tokenizer = load_tokenizer(tokenizer_dir)
    self._init_loss(cfg, model_cfg)
    data = cfg.data
    self.sources = [sources.dataset_dir("contrastive", str(s), data) for s in data.sources]
    self.train_splits = [prepared.load_split(d, "train") for d in self.sources]
    self._eval_cache = None

  def _init_loss(self, cfg: ml_collections.ConfigDict, model_cfg: ModelConfig):
    self.cfg, self.model_cfg = cfg, model_cfg
    obj = cfg.objective
    self.kind = str(obj.kind)
    if self.kind not in ("pair", "triplet"):
      raise ConfigError(f"objective.kind={self.kind!r} is not 'pair' or 'triplet'")
    self.pooling = str(obj.pooling)
    self.quantize = str(obj.quantize)
    if self.pooling not in ("mean", "last"):
      raise ConfigError(f"objective.pooling={self.pooling!r} is not 'mean' or 'last'")
    margin = None if float(obj.margin) < 0 else float(obj.margin)
    dims = [None if int(d) <= 0 else int(d) for d in obj.matryoshka_dims] or None
    weights = list(obj.matryoshka_weights) or None
    if dims and weights and len(dims) != len(weights):
      raise ConfigError(f"objective.matryoshka_dims has {len(dims)} entries but matryoshka_weights has {len(weights)}")
    if dims and any(d is not None and d > model_cfg.hidden_size for d in dims):
      raise ConfigError(f"objective.matryoshka_dims {obj.matryoshka_dims} exceed hidden_size {model_cfg.hidden_size}")
    if self.kind == "pair":
      self.objective = contrastive.pair_objective(float(obj.temperature), margin=margin, use_qq=bool(obj.use_qq),
                                                  mrl_dims=dims, mrl_weights=weights)
    else:
      self.objective = contrastive.triplet_objective(float(obj.temperature), margin=margin, use_qq=bool(obj.use_qq),
                                                     mrl_dims=dims, mrl_weights=weights)
    chunks = int(obj.gradcache_chunks)
    gb = int(cfg.train.global_batch)
    if chunks > 1:
      if gb % chunks:
        raise ConfigError(f"train.global_batch={gb} is not divisible by objective.gradcache_chunks={chunks}")
      self.loss_and_grad = self._gradcache_loss_and_grad
    self.chunks = chunks

  @classmethod
  def for_compile(cls, cfg: ml_collections.ConfigDict, model_cfg: ModelConfig) -> "ContrastiveTask":
    """The loss and batch layout without tokenizer or data, for compile checks (`pplx_jax.stages.aot`)."""
    task = cls.__new__(cls)
    task._init_loss(cfg, model_cfg)
    return task

  def batch_shapes(self, global_batch: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """{key: (shape, dtype)} of a global training batch (what `train_data` yields, all processes together)."""
    d, n = self.cfg.data, global_batch
    out = {"q_ids": ((n, int(d.query_len)), "int32"), "q_mask": ((n, int(d.query_len)), "int32"),
           "d_ids": ((n, int(d.doc_len)), "int32"), "d_mask": ((n, int(d.doc_len)), "int32"),
           "dataset": ((n,), "int32"), "phase": ((n,), "int32")}
    if self.kind == "triplet":
      k = int(d.num_negatives)
      out.update(n_ids=((n, k, int(d.doc_len)), "int32"), n_mask=((n, k, int(d.doc_len)), "int32"))
    return out

  # ---- data ----

  def train_data(self, per_process_batch: int, shard_index: int, shard_count: int):
    from pplx_jax.stages.contrastive.data import PairPipeline
    data = self.cfg.data
    phases = [dict(p) for p in data.phases] or [{"until_step": int(self.cfg.train.steps),
                                                 "weights": [1.0] * len(self.sources)}]
    for i, p in enumerate(phases):
      if len(p["weights"]) != len(self.sources):
        raise ConfigError(f"data.phases[{i}].weights has {len(p['weights'])} entries for {len(self.sources)} sources")

    def make(phase: int):
      w = [float(x) for x in phases[phase]["weights"]]
      keep = [i for i, x in enumerate(w) if x > 0]
      pipe = PairPipeline([self.train_splits[i] for i in keep], self.tokenizer, per_process_batch,
                          weights=[w[i] for i in keep], kind=self.kind, query_len=int(data.query_len),
                          doc_len=int(data.doc_len), num_negatives=int(data.num_negatives),
                          seed=int(data.shuffle_seed) + phase, shard_index=shard_index, shard_count=shard_count)
      pipe.source_index = keep
      return pipe

    return PhasedPipeline(make, [int(p["until_step"]) for p in phases])

  # ---- loss ----

  def _embed_towers(self, model, batch):
    return gradcache.embed_towers(model, batch, gradcache.TOWERS, self.quantize, pooling=self.pooling)

  def loss(self, model, batch, rng):
    return self.objective(self._embed_towers(model, batch), batch)

  def _gradcache_loss_and_grad(self, graphdef, params, batch, rng):
    return gradcache.loss_and_grad(graphdef, params, batch, self.objective, self.chunks, gradcache.TOWERS,
                                   self.quantize, pooling=self.pooling)

  def tokens_per_step(self, global_batch: int) -> int:
    d = self.cfg.data
    per = int(d.query_len) + int(d.doc_len) + (int(d.num_negatives) * int(d.doc_len) if self.kind == "triplet" else 0)
    return global_batch * per

  def flops_per_step(self, model_cfg: ModelConfig, global_batch: int) -> float:
    d = self.cfg.data
    total = global_batch * flops_lib.train_flops_per_token(model_cfg, int(d.query_len), False) * int(d.query_len)
    docs = global_batch * (1 + (int(d.num_negatives) if self.kind == "triplet" else 0))
    total += docs * flops_lib.train_flops_per_token(model_cfg, int(d.doc_len), False) * int(d.doc_len)
    return total

  # ---- evaluation ----

  def evaluate(self, model_fn: Callable, step: int) -> dict[str, float]:
    """Held-out retrieval (nDCG@10, Recall@k, MRR) for float32 / int8 / binary and Matryoshka prefixes."""
    from pplx_jax.eval import metrics as eval_metrics
    queries, docs, qrels = self.eval_set()
    model = model_fn()
    emb = embed_with_model(model, self.tokenizer, queries + docs, self.pooling, int(self.cfg.data.doc_len))
    q, d = emb[:len(queries)], emb[len(queries):]
    out = {}
    dims = tuple(None if int(x) <= 0 else int(x) for x in self.cfg.eval.dims)
    for dtype in self.cfg.eval.dtypes:
      scores = eval_metrics.retrieval_scores(q, d, qrels, tuple(self.cfg.eval.ks), str(dtype), dims)
      out.update({f"eval/{k}": float(v) for k, v in scores.items()})
    return out

  def eval_set(self):
    if self._eval_cache is None:
      from pplx_jax.stages.contrastive import evalset as pair_evalset
      ev = self.cfg.eval
      if ev.data == "wordnet":
        self._eval_cache = pair_evalset.wordnet_retrieval_set(
            "validation", max_queries=int(ev.max_queries), validation_fraction=float(self.cfg.data.validation_fraction),
            seed=int(self.cfg.data.split_seed), max_docs=int(ev.max_docs) if int(ev.max_docs) > 0 else None)
      elif ev.data in pair_evalset.LOCAL_EVAL_SOURCES:
        self._eval_cache = pair_evalset.local_retrieval_set(
            str(ev.data), "validation", max_queries=int(ev.max_queries),
            validation_fraction=float(self.cfg.data.validation_fraction), seed=int(self.cfg.data.split_seed),
            max_docs=int(ev.max_docs) if int(ev.max_docs) > 0 else None)
      else:
        self._eval_cache = pair_evalset.pairs_retrieval_set(ev.data, "validation", max_queries=int(ev.max_queries))
    return self._eval_cache


def default_objective_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      kind="pair", temperature=0.02, margin=0.1, use_qq=True, quantize="int8", pooling="mean",
      matryoshka_dims=(), matryoshka_weights=(), gradcache_chunks=1))


def default_data_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      sources=("wordnet",), dir="runs/data", tokenizer="", query_len=32, doc_len=64, num_negatives=3,
      validation_fraction=0.05, split_seed=0, shuffle_seed=0,
      wordnet_limit=0,  # sources "wordnet" / "wordnet_triplets": only the first N synsets (quick runs); 0 = all
      # [{"until_step": N, "weights": [w per source]}, ...]; empty = one phase with equal weights.
      phases=()))


def default_eval_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      data="wordnet", max_queries=1000, max_docs=-1, dtypes=("float32", "int8", "binary"), dims=(64, -1),
      ks=(1, 10, 100)))
