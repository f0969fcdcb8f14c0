"""Dense retrieval evaluation of a model on disk: embed queries and documents once, score every dtype and
Matryoshka prefix (`pplx_jax.eval.metrics`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from pplx_jax.eval.metrics import DTYPES, EvalError, as_relevant, retrieval_scores


def evaluate_model(model_path: str | os.PathLike, queries: Sequence[str], docs: Sequence[str], qrels,
                   dtypes: Iterable[str] = DTYPES, dims=(None,), ks: Iterable[int] = (1, 10, 100), *,
                   batch_size: int = 32, max_length: int = 512, compute_dtype: str = "float32",
                   progress: bool = False) -> dict[str, float]:
  """Embed `queries` and `docs` once with the model at `model_path` and score every dtype x dim.

  Returns ``{"float32/full/ndcg@10": ..., "int8/128/recall@100": ..., ...}`` (see :func:`retrieval_scores`);
  `qrels` in any form :func:`as_relevant` accepts (query and doc *indices*).
  """
  from pplx_jax.inference.embed import embed_texts

  queries, docs = list(queries), list(docs)
  if not queries or not docs:
    raise EvalError(f"need queries and documents, got {len(queries)} queries and {len(docs)} documents")
  dtypes = list(dtypes)
  for dt in dtypes:
    if dt not in DTYPES:
      raise EvalError(f"unknown embedding dtype {dt!r}; expected one of {DTYPES}")
  rel = as_relevant(qrels, len(queries), len(docs))  # fail before embedding
  emb = embed_texts(str(model_path), queries + docs, batch_size=batch_size, max_length=max_length,
                    compute_dtype=compute_dtype, progress=progress)
  q, d = emb[:len(queries)], emb[len(queries):]
  out: dict[str, float] = {}
  for dt in dtypes:
    out.update(retrieval_scores(q, d, rel, ks, dt, dims))
  return out
