"""ConTEB-style evaluation (embedding.md §3.5): every query scored against every chunk of the collection, nDCG@10,
for the *same model* used two ways, side by side:

* ``contextual``: chunks embedded with late chunking (one pass over each document, `pplx-jax embed --contextual`);
* ``non_contextual``: every chunk embedded alone (`pplx-jax embed` of the chunk texts).

Queries are embedded alone in both (a query is a one-chunk document: the same vector either way). The difference
between the two rows is what the document context contributes; on the WordNet contextual set
(:mod:`pplx_jax.stages.contextual.wordnet_docs`) many gold chunks are word-for-word copies of chunks of other documents,
so only the contextual row can rank them first.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

from pplx_jax.eval.metrics import DTYPES, EvalError, as_relevant, retrieval_scores

MODES = ("contextual", "non_contextual")


def contextual_scores(query_emb: np.ndarray, contextual_chunks: np.ndarray, plain_chunks: np.ndarray, qrels,
                      dtypes: Iterable[str] = DTYPES, dims=(None,), ks: Iterable[int] = (1, 10, 100)
                      ) -> dict[str, float]:
  """``{"<mode>/<dtype>/<dim>/<metric>": value}`` for both modes (float embeddings in, quantised per dtype)."""
  out: dict[str, float] = {}
  for mode, chunks in zip(MODES, (contextual_chunks, plain_chunks)):
    for dt in dtypes:
      out.update({f"{mode}/{k}": v for k, v in retrieval_scores(query_emb, chunks, qrels, ks, dt, dims).items()})
  return out


def _flatten(docs: Sequence[Sequence[str]]) -> list[str]:
  return [c for d in docs for c in d]


def _check(queries, docs, qrels, dtypes):
  if not queries or not docs:
    raise EvalError(f"need queries and documents, got {len(queries)} queries and {len(docs)} documents")
  for dt in dtypes:
    if dt not in DTYPES:
      raise EvalError(f"unknown embedding dtype {dt!r}; expected one of {DTYPES}")
  return as_relevant(qrels, len(queries), sum(len(d) for d in docs))


def evaluate_with_model(model, tokenizer, queries: Sequence[str], docs: Sequence[Sequence[str]], qrels,
                        dtypes: Iterable[str] = DTYPES, dims=(None,), ks: Iterable[int] = (1, 10, 100), *,
                        batch_size: int = 64, max_length: int = 512, multiple: int = 1) -> dict[str, float]:
  """Both modes with an in-memory model under the caller's mesh (training-time evaluation)."""
  from pplx_jax.inference.contextual import embed_documents_with_model
  from pplx_jax.inference.embed import embed_with_model

  dtypes = list(dtypes)
  rel = _check(queries, docs, qrels, dtypes)
  plain = embed_with_model(model, tokenizer, list(queries) + _flatten(docs), "mean", max_length, batch_size)
  ctx = embed_documents_with_model(model, tokenizer, docs, batch_size, max_length, multiple=multiple)
  return contextual_scores(plain[:len(queries)], ctx, plain[len(queries):], rel, dtypes, dims, ks)


def evaluate_model(model_path: str, queries: Sequence[str], docs: Sequence[Sequence[str]], qrels,
                   dtypes: Iterable[str] = DTYPES, dims=(None,), ks: Iterable[int] = (1, 10, 100), *,
                   batch_size: int = 32, max_length: int = 512, compute_dtype: str = "float32") -> dict[str, float]:
  """Both modes with the model at `model_path` (loaded once), batches sharded over the local devices."""
  from pplx_jax.inference import contextual as embed_contextual
  from pplx_jax.inference import embed
  from pplx_jax.inference import load as inference_load

  dtypes = list(dtypes)
  rel = _check(queries, docs, qrels, dtypes)
  model, cfg, tok, mesh, rules = inference_load.load(str(model_path), compute_dtype)
  texts = list(queries) + _flatten(docs)
  plain = embed.embed_token_ids(embed.make_embed_fn(model, mesh, rules), tok.encode_batch(texts), tok.pad_id,
                                batch_size, max_length, multiple=mesh.size)
  doc_ids = [tok.encode_batch(list(d)) for d in docs]
  ctx = embed_contextual.embed_document_ids(embed_contextual.make_span_fn(model, mesh, rules), doc_ids,
                                            embed_contextual.separator_id(tok), tok.pad_id, batch_size, max_length,
                                            multiple=mesh.size)
  return contextual_scores(plain[:len(queries)], ctx, plain[len(queries):], rel, dtypes, dims, ks)


def format_table(results: Mapping[str, float], metric: str = "ndcg@10", digits: int = 4) -> str:
  """Markdown: one row per dtype/dim, columns contextual | non-contextual | gain for `metric`."""
  rows: dict[tuple[str, str], dict[str, float]] = {}
  for key, v in results.items():
    parts = key.split("/")
    if len(parts) == 4 and parts[3] == metric:
      rows.setdefault((parts[1], parts[2]), {})[parts[0]] = v
  lines = [f"| dtype | dim | contextual {metric} | non-contextual {metric} | gain |", "|---|---:|---:|---:|---:|"]
  for (dt, dim), v in rows.items():
    c, n = v.get("contextual", float("nan")), v.get("non_contextual", float("nan"))
    lines.append(f"| {dt} | {dim} | {c:.{digits}f} | {n:.{digits}f} | {c - n:+.{digits}f} |")
  return "\n".join(lines)
