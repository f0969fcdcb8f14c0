"""mteb 2.x, offline: a pplx-jax model as an mteb encoder, and a local retrieval task from in-memory data.

    from pplx_jax.eval import mteb_adapter
    model = mteb_adapter.PplxEncoder("runs/merged")                  # any model path checkpoint.resolve takes
    task = mteb_adapter.local_retrieval_task(queries, docs, qrels)   # (texts, texts, qrels by index)
    result = mteb.evaluate(model, task, cache=None)                  # no hub, no result cache
    mteb_adapter.task_scores(result)                                 # {"ndcg_at_10": ..., ...}

`mteb` is an optional dependency (``pip install mteb``); set ``HF_HUB_OFFLINE=1`` and ``HF_DATASETS_OFFLINE=1``:
nothing here needs the hub. The encoder loads the model once and returns mean-pooled embeddings; with
``dtype="int8"`` it returns the int8 codes and with ``dtype="binary"`` the ±1 sign vectors (as float32), whose
cosine similarity (mteb's default) ranks exactly like the cosine of the codes and the Hamming similarity used
by :mod:`pplx_jax.eval.metrics`. mteb/pytrec_eval break score ties by doc id (descending); our metrics by
doc index (ascending): doc ids here are zero-padded indices, so the two rules only differ on exact ties.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from pplx_jax.core import paths

__all__ = ["PplxEncoder", "local_retrieval_task", "task_scores", "mteb_retrieval_scores"]

_DTYPES = ("float32", "int8", "binary")


def _require_mteb():
  try:
    import mteb  # noqa: F401
  except ImportError as e:
    raise ImportError("the mteb adapter needs mteb 2.x: pip install mteb") from e


class PplxEncoder:
  """mteb ``EncoderProtocol`` for a pplx-jax model (workdir, checkpoint step, HF / sentence-transformers folder).

  Duck-typed (``encode``, ``similarity``, ``similarity_pairwise``, ``mteb_model_meta``) rather than a subclass
  of mteb's ``AbsEncoder``, so importing this module does not import mteb (about 10 s).

  Args:
    model_path: the model.
    dtype: "float32" (default), "int8" (codes round(127·tanh(x))) or "binary" (±1 signs) embeddings.
    dim: keep the first `dim` dimensions (Matryoshka) before quantising.
    batch_size, max_length, compute_dtype: as ``pplx_jax.inference.embed.embed_texts``. mteb's ``encode_kwargs``
      batch size only shapes its DataLoader; batching for the model is ours (length-bucketed).
    name: the mteb model name (must contain "/"; default ``pplx-jax/<folder name>``).
  """

  def __init__(self, model_path: str | os.PathLike, *, dtype: str = "float32", dim: int | None = None,
               batch_size: int = 32, max_length: int = 512, compute_dtype: str = "float32",
               name: str | None = None):
    _require_mteb()
    from mteb.models.model_meta import ModelMeta

    from pplx_jax.inference import embed, load

    if dtype not in _DTYPES:
      raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    self.model_path = str(model_path)
    self.dtype, self.dim = dtype, dim
    self.batch_size, self.max_length = batch_size, max_length
    model, cfg, self._tok, self._mesh, rules = load.load(self.model_path, compute_dtype)
    if dim is not None and not 0 < dim <= cfg.hidden_size:
      raise ValueError(f"dim must be in 1..{cfg.hidden_size}, got {dim}")
    self.model = model
    self.model_config = cfg
    self._run = embed.make_embed_fn(model, self._mesh, rules)
    self.mteb_model_meta = ModelMeta(
        loader=None, name=name or f"pplx-jax/{paths.absolute(model_path).name}", revision="local",
        release_date=None, languages=None, n_parameters=cfg.num_params(), memory_usage_mb=None,
        max_tokens=max_length, embed_dim=dim or cfg.hidden_size, license=None, open_weights=True,
        public_training_code=None, public_training_data=None, framework=["JAX"], similarity_fn_name="cosine",
        use_instructions=False, training_datasets=None, model_type=["dense"])

  def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
    """Float32 mean-pooled embeddings [N, D] (before truncation and quantisation), in input order."""
    from pplx_jax.inference import embed, load

    ids = self._tok.encode_batch(list(texts))
    load.check_token_ids(ids, self.model_config.vocab_size)
    if not ids:
      return np.zeros((0, self.model_config.hidden_size), np.float32)
    return embed.embed_token_ids(self._run, ids, self._tok.pad_id, self.batch_size, self.max_length,
                                 multiple=self._mesh.size)

  def postprocess(self, emb: np.ndarray) -> np.ndarray:
    """Float embeddings -> what mteb scores with cosine: prefix, then int8 codes or ±1 signs, as float32."""
    if self.dim is not None:
      emb = emb[:, :self.dim]
    if self.dtype == "int8":
      from pplx_jax.models.quantize import quantize_int8_np
      return quantize_int8_np(emb).astype(np.float32)
    if self.dtype == "binary":
      return np.where(emb >= 0, 1.0, -1.0).astype(np.float32)
    return emb.astype(np.float32)

  def encode(self, inputs, *, task_metadata=None, hf_split: str | None = None, hf_subset: str | None = None,
             prompt_type=None, **kwargs: Any) -> np.ndarray:
    del task_metadata, hf_split, hf_subset, prompt_type, kwargs  # pplx-embed uses no prompts
    texts: list[str] = []
    for batch in inputs:
      texts.extend(batch["text"])
    return self.postprocess(self.embed_texts(texts))

  def similarity(self, embeddings1, embeddings2):
    """Cosine similarity matrix (mteb's own implementation)."""
    from mteb.similarity_functions import cos_sim
    return cos_sim(embeddings1, embeddings2)

  def similarity_pairwise(self, embeddings1, embeddings2):
    from mteb.similarity_functions import pairwise_cos_sim
    return pairwise_cos_sim(embeddings1, embeddings2)


def _qrels_dict(qrels, num_queries: int, num_docs: int) -> list[np.ndarray]:
  from pplx_jax.eval.metrics import as_relevant
  return as_relevant(qrels, num_queries, num_docs)


def local_retrieval_task(queries: Sequence[str], docs: Sequence[str], qrels, *,
                         name: str = "PplxJaxLocalRetrieval", split: str = "test",
                         description: str = "A local retrieval task built in memory by pplx_jax."):
  """An mteb ``AbsTaskRetrieval`` over in-memory data (no download): query ids ``q<i>``, doc ids ``d<j>``
  (zero-padded), ``qrels`` by index in any form :func:`pplx_jax.eval.metrics.as_relevant` accepts. Queries
  without a relevant doc are left out (mteb needs judgements for every query it scores)."""
  _require_mteb()
  from datasets import Dataset
  from mteb.abstasks.retrieval import AbsTaskRetrieval
  from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
  from mteb.abstasks.task_metadata import TaskMetadata

  queries, docs = list(queries), list(docs)
  rel = _qrels_dict(qrels, len(queries), len(docs))
  qw, dw = len(str(max(len(queries) - 1, 0))), len(str(max(len(docs) - 1, 0)))
  qid = [f"q{i:0{qw}d}" for i in range(len(queries))]
  did = [f"d{j:0{dw}d}" for j in range(len(docs))]
  keep = [i for i in range(len(queries)) if len(rel[i])]
  split_data = RetrievalSplitData(
      queries=Dataset.from_dict({"id": [qid[i] for i in keep], "text": [queries[i] for i in keep]}),
      corpus=Dataset.from_dict({"id": did, "text": docs, "title": [""] * len(docs)}),
      relevant_docs={qid[i]: {did[int(j)]: 1 for j in rel[i]} for i in keep},
      top_ranked=None,
  )
  metadata = TaskMetadata(
      type="Retrieval", name=name, description=description, main_score="ndcg_at_10",
      dataset={"path": f"local/{name}", "revision": "1"}, reference=None, category="t2t", modalities=["text"],
      eval_splits=[split], eval_langs=["eng-Latn"], date=None, domains=[], task_subtypes=[],
      license="not specified", annotations_creators="derived", dialect=[], sample_creation="found",
      bibtex_citation="")

  def load_data(self, num_proc: int | None = None, **kwargs) -> None:
    del num_proc, kwargs
    self.dataset = {"default": {split: split_data}}
    self.data_loaded = True

  cls = type(name, (AbsTaskRetrieval,), {"metadata": metadata, "load_data": load_data})
  return cls()


def task_scores(result, split: str = "test") -> dict[str, float]:
  """The score dict of the first task and subset of an ``mteb.evaluate`` result (``ndcg_at_10``, ...)."""
  task_results = getattr(result, "task_results", result)
  tr = task_results[0] if isinstance(task_results, Sequence) else task_results
  scores = tr.scores[split][0]
  return {k: v for k, v in scores.items() if isinstance(v, (int, float))}


def mteb_retrieval_scores(model_path_or_encoder, queries: Sequence[str], docs: Sequence[str], qrels,
                          **encoder_kwargs) -> dict[str, float]:
  """Run mteb offline on (queries, docs, qrels) and return its scores (``ndcg_at_10``, ``recall_at_100``, ...)."""
  _require_mteb()
  import mteb

  enc = model_path_or_encoder if isinstance(model_path_or_encoder, PplxEncoder) else PplxEncoder(
      model_path_or_encoder, **encoder_kwargs)
  task = local_retrieval_task(queries, docs, qrels)
  result = mteb.evaluate(enc, task, cache=None, show_progress_bar=False)
  return task_scores(result)
