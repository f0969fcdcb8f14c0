"""Retrieval metrics (pure NumPy): nDCG@k, Recall@k, MRR@k for float32, int8 and binary embeddings at
Matryoshka prefixes.

Conventions (those of trec_eval / pytrec_eval, which mteb uses, for binary relevance):

* nDCG@k = DCG@k / IDCG@k with DCG@k = Σ_{rank r ≤ k, doc relevant} 1 / log2(r + 1) (gain 1 per relevant doc)
  and IDCG@k the DCG of a perfect ranking (min(k, #relevant) relevant docs on top);
* Recall@k = (relevant docs in the top k) / (all relevant docs of the query);
* MRR@k = 1 / (rank of the first relevant doc), 0 when it is not in the top k (``k=None``: the whole ranking);
* every metric is the mean over the queries that have at least one relevant doc (others are left out, as
  trec_eval leaves out queries without judgements).

Ties: documents are ranked by descending score, and documents with *equal* scores by ascending document index,
so a relevant doc's rank is 1 + #(docs scoring higher) + #(docs with the same score and a smaller index).
This is deterministic and independent of any sort's stability. (trec_eval breaks ties by document id
*descending*; with float32 cosine scores ties are rare, but binary Hamming scores tie often, so compare
binary numbers with other tools only where the tie rule is the same.)

Similarities per embedding dtype:

* ``float32``: cosine similarity;
* ``int8``: cosine similarity of the int8 codes round(127·tanh(x)) (the paper's native int8 embeddings);
* ``binary``: Hamming similarity of the sign bits (number of equal bits = dim - Hamming distance), which ranks
  exactly like the cosine of the ±1 vectors.

Matryoshka: ``dims=(64, 128, None)`` evaluates the first 64 and 128 dimensions and the full embedding
(``None``); truncation happens before quantisation, as in ``pplx-jax embed --dim``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from pplx_jax.core.errors import UserError

DTYPES = ("float32", "int8", "binary")
_CHUNK_ELEMENTS = 1 << 24  # scores held at once (queries per chunk x docs)


class EvalError(UserError):
  """Bad evaluation inputs (shapes, relevance judgements, dims, dtypes)."""


# ---------------------------------------------------------------------------------------------
# Relevance judgements


def as_relevant(relevant, num_queries: int, num_docs: int | None = None) -> list[np.ndarray]:
  """Relevance judgements -> one sorted array of relevant doc indices per query.

  Accepted forms (binary relevance; a graded value > 0 counts as relevant, <= 0 as not relevant):

  * a 1-D integer array of length Q: the one relevant doc of each query (a negative entry: none);
  * a 2-D boolean array [Q, N]: ``relevant[q, d]``;
  * a mapping ``{query index: docs}``; missing queries have no relevant doc;
  * a sequence of length Q of ``docs``;

  where ``docs`` is an int, an iterable of doc indices, or a mapping ``{doc index: relevance}``.
  """
  def docs_of(v) -> list[int]:
    if v is None:
      return []
    if isinstance(v, (int, np.integer)):
      return [int(v)] if v >= 0 else []
    if isinstance(v, Mapping):
      return [int(d) for d, rel in v.items() if rel > 0]
    return [int(d) for d in v]

  if isinstance(relevant, np.ndarray) and relevant.dtype == bool:
    if relevant.ndim != 2 or relevant.shape[0] != num_queries:
      raise EvalError(f"a boolean relevance matrix must have shape [{num_queries}, num_docs], got {relevant.shape}")
    if num_docs is not None and relevant.shape[1] != num_docs:
      raise EvalError(f"relevance matrix has {relevant.shape[1]} columns but there are {num_docs} documents")
    out = [np.flatnonzero(row).astype(np.int64) for row in relevant]
  elif isinstance(relevant, np.ndarray) and relevant.ndim == 1 and np.issubdtype(relevant.dtype, np.integer):
    if len(relevant) != num_queries:
      raise EvalError(f"relevance array has {len(relevant)} entries but there are {num_queries} queries")
    out = [np.asarray([d] if d >= 0 else [], np.int64) for d in relevant.tolist()]
  elif isinstance(relevant, Mapping):
    bad = [q for q in relevant if not 0 <= int(q) < num_queries]
    if bad:
      raise EvalError(f"relevance judgements name query {bad[0]}, outside 0..{num_queries - 1}")
    out = [np.asarray([], np.int64)] * num_queries
    for q, v in relevant.items():
      out[int(q)] = np.asarray(docs_of(v), np.int64)
  else:
    relevant = list(relevant)
    if len(relevant) != num_queries:
      raise EvalError(f"relevance judgements for {len(relevant)} queries but there are {num_queries} queries")
    out = [np.asarray(docs_of(v), np.int64) for v in relevant]
  out = [np.unique(r) for r in out]
  if num_docs is not None:
    for q, r in enumerate(out):
      if len(r) and (r[0] < 0 or r[-1] >= num_docs):
        raise EvalError(f"query {q}: relevant doc index {int(r[0] if r[0] < 0 else r[-1])} is outside "
                        f"0..{num_docs - 1}")
  return out


# ---------------------------------------------------------------------------------------------
# Similarities


def _unit_rows(x: np.ndarray, dtype) -> np.ndarray:
  x = x.astype(dtype)
  n = np.linalg.norm(x, axis=-1, keepdims=True)
  return x / np.maximum(n, np.finfo(dtype).tiny)


def hamming_similarity(query_bits: np.ndarray, doc_bits: np.ndarray, dim: int | None = None) -> np.ndarray:
  """Equal sign bits between packed binary codes ([Q, B] and [N, B] uint8, MSB first) -> int32 [Q, N].

  That is ``dim - hamming_distance`` over the first `dim` bits (default 8·B; pad bits are ignored). Computed
  exactly as (dim + <±1, ±1>) / 2 with the bits unpacked (np.unpackbits) into ±1 vectors: one BLAS matrix
  product instead of a popcount per pair (the integers involved are far below 2**24, so float32 is exact).
  """
  q = np.asarray(query_bits)
  d = np.asarray(doc_bits)
  if q.dtype != np.uint8 or d.dtype != np.uint8 or q.ndim != 2 or d.ndim != 2 or q.shape[1] != d.shape[1]:
    raise EvalError(f"packed binary codes must be uint8 [Q, B] and [N, B] with the same B, got {q.dtype}{q.shape} "
                    f"and {d.dtype}{d.shape}")
  dim = 8 * q.shape[1] if dim is None else int(dim)
  if not 0 < dim <= 8 * q.shape[1]:
    raise EvalError(f"dim {dim} does not fit {q.shape[1]} bytes of packed bits")

  def signs(x):
    return np.unpackbits(x, axis=1, count=dim).astype(np.float32) * 2.0 - 1.0

  dots = signs(q) @ signs(d).T
  return np.rint((dim + dots) / 2).astype(np.int32)


def similarity(query_emb: np.ndarray, doc_emb: np.ndarray, dtype: str = "float32",
               dim: int | None = None) -> np.ndarray:
  """Scores [Q, N] of stored embeddings of one `dtype` (see the module docstring).

  ``float32``: float arrays, cosine in float32. ``int8``: int8 codes, cosine (exact integer dot products in
  float64). ``binary``: packed uint8 codes, Hamming similarity (`dim`: the number of real bits).
  """
  if dtype == "float32":
    return _unit_rows(np.asarray(query_emb), np.float32) @ _unit_rows(np.asarray(doc_emb), np.float32).T
  if dtype == "int8":
    q = np.asarray(query_emb).astype(np.float64)
    d = np.asarray(doc_emb).astype(np.float64)
    dots = q @ d.T  # integer-valued and exact in float64 (|dot| <= 127² · D)
    tiny = np.finfo(np.float64).tiny
    return dots / np.maximum(np.linalg.norm(q, axis=1), tiny)[:, None] / np.maximum(np.linalg.norm(d, axis=1), tiny)
  if dtype == "binary":
    return hamming_similarity(query_emb, doc_emb, dim)
  raise EvalError(f"unknown embedding dtype {dtype!r}; expected one of {DTYPES}")


# ---------------------------------------------------------------------------------------------
# Ranks and metrics


def rank_documents(scores: np.ndarray, k: int | None = None) -> np.ndarray:
  """Doc indices [Q, k] in rank order: descending score, equal scores by ascending doc index."""
  scores = _clean_scores(scores)
  k = scores.shape[1] if k is None else min(k, scores.shape[1])
  return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def _clean_scores(scores) -> np.ndarray:
  scores = np.asarray(scores)
  if scores.ndim != 2:
    raise EvalError(f"scores must be a [num_queries, num_docs] matrix, got shape {scores.shape}")
  if np.issubdtype(scores.dtype, np.floating) and np.isnan(scores).any():
    scores = np.where(np.isnan(scores), -np.inf, scores)  # a NaN score ranks last
  return scores


def relevant_ranks(scores: np.ndarray, relevant) -> list[np.ndarray]:
  """1-based rank of every relevant doc of every query (the tie rule of the module docstring)."""
  scores = _clean_scores(scores)
  rel = as_relevant(relevant, scores.shape[0], scores.shape[1])
  return _ranks(scores, rel, 0)


def _ranks(scores: np.ndarray, rel: Sequence[np.ndarray], offset: int) -> list[np.ndarray]:
  """Ranks for queries offset.. of `rel` whose score rows are `scores`."""
  n = scores.shape[1]
  out = []
  doc_index = np.arange(n)
  for i in range(scores.shape[0]):
    r = rel[offset + i]
    if not len(r):
      out.append(np.zeros(0, np.int64))
      continue
    row = scores[i]
    s = row[r][:, None]
    higher = (row[None, :] > s).sum(axis=1)
    tied_before = ((row[None, :] == s) & (doc_index[None, :] < r[:, None])).sum(axis=1)
    out.append((1 + higher + tied_before).astype(np.int64))
  return out


def _per_query(ranks: Sequence[np.ndarray], fn) -> np.ndarray:
  return np.asarray([fn(r) for r in ranks if len(r)], np.float64)


def _mean(values: np.ndarray) -> float:
  if not len(values):
    raise EvalError("no query has a relevant document: the metrics are undefined")
  return float(values.mean())


def _ndcg(r: np.ndarray, k: int) -> float:
  dcg = float(np.sum(1.0 / np.log2(r[r <= k] + 1.0)))
  idcg = float(np.sum(1.0 / np.log2(np.arange(1, min(k, len(r)) + 1) + 1.0)))
  return dcg / idcg


def _recall(r: np.ndarray, k: int) -> float:
  return float(np.count_nonzero(r <= k)) / len(r)


def _rr(r: np.ndarray, k: int | None) -> float:
  first = int(r.min())
  return 1.0 / first if k is None or first <= k else 0.0


def metrics_from_ranks(ranks: Sequence[np.ndarray], ks: Iterable[int] = (1, 10, 100)) -> dict[str, float]:
  """{"ndcg@k", "recall@k", "mrr@k"} means over the queries with relevant docs, from `relevant_ranks`."""
  out = {}
  ks = list(ks)
  for k in ks:
    out[f"ndcg@{k}"] = _mean(_per_query(ranks, lambda r: _ndcg(r, k)))
  for k in ks:
    out[f"recall@{k}"] = _mean(_per_query(ranks, lambda r: _recall(r, k)))
  for k in ks:
    out[f"mrr@{k}"] = _mean(_per_query(ranks, lambda r: _rr(r, k)))
  return out


def _metric(scores, relevant, per_query: bool, fn):
  values = _per_query(relevant_ranks(scores, relevant), fn)
  return values if per_query else _mean(values)


def ndcg_at_k(scores: np.ndarray, relevant, k: int, per_query: bool = False):
  """Mean nDCG@k (binary gains) of score matrix [Q, N]; ``per_query``: the values of the judged queries."""
  _check_k(k)
  return _metric(scores, relevant, per_query, lambda r: _ndcg(r, k))


def recall_at_k(scores: np.ndarray, relevant, k: int, per_query: bool = False):
  """Mean Recall@k of score matrix [Q, N]."""
  _check_k(k)
  return _metric(scores, relevant, per_query, lambda r: _recall(r, k))


def mrr(scores: np.ndarray, relevant, k: int | None = None, per_query: bool = False):
  """Mean reciprocal rank of the first relevant doc (0 beyond rank k; ``k=None``: no cut-off)."""
  if k is not None:
    _check_k(k)
  return _metric(scores, relevant, per_query, lambda r: _rr(r, k))


def _check_k(k) -> None:
  if not isinstance(k, (int, np.integer)) or k < 1:
    raise EvalError(f"k must be a positive integer, got {k!r}")


# ---------------------------------------------------------------------------------------------
# Noise of a difference between two systems on the same queries


def paired_bootstrap(a, b, num_resamples: int = 10_000, confidence: float = 0.95, seed: int = 0
                     ) -> dict[str, float]:
  """Paired bootstrap over queries of mean(a) - mean(b), where a[i] and b[i] are two systems' per-query metric on
  the same query i (`ndcg_at_k(..., per_query=True)`). Queries are resampled with replacement, the same draw for
  both systems, so query difficulty, shared by both, cancels. Returns {"diff": the observed difference, "low",
  "high": the percentile interval at `confidence`, "p_le_0": the fraction of resampled differences <= 0 (a one-sided
  p-value for "a is better than b")}."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.ndim != 1 or a.shape != b.shape or not len(a):
    raise EvalError(f"paired_bootstrap needs two equal-length 1-D per-query arrays, got {a.shape} and {b.shape}")
  if not 0.0 < confidence < 1.0:
    raise EvalError(f"confidence must be in (0, 1), got {confidence}")
  if num_resamples < 1:
    raise EvalError(f"num_resamples must be positive, got {num_resamples}")
  d = a - b
  idx = np.random.default_rng(seed).integers(0, len(d), size=(int(num_resamples), len(d)))
  means = d[idx].mean(axis=1)
  tail = (1.0 - confidence) / 2.0
  low, high = np.quantile(means, [tail, 1.0 - tail])
  return {"diff": float(d.mean()), "low": float(low), "high": float(high), "p_le_0": float(np.mean(means <= 0.0))}


# ---------------------------------------------------------------------------------------------
# Embeddings -> scores table


def dim_label(dim: int | None) -> str:
  return "full" if dim is None else str(dim)


def normalise_dims(dims) -> list[int | None]:
  if dims is None or isinstance(dims, (int, np.integer, str)):
    dims = [dims]
  out = []
  for d in dims:
    if d is None or (isinstance(d, str) and d.lower() in ("full", "none")):
      out.append(None)
      continue
    try:
      d = int(d)
    except (TypeError, ValueError):
      raise EvalError(f"a Matryoshka dim must be a positive integer or 'full', got {d!r}") from None
    if d <= 0:
      raise EvalError(f"a Matryoshka dim must be positive, got {d}")
    out.append(d)
  return out


def _stored(emb: np.ndarray, dtype: str, dim: int | None) -> np.ndarray:
  """Float embeddings -> what would be stored: Matryoshka prefix, then quantisation."""
  from pplx_jax.models.quantize import quantize_np

  if dim is not None:
    emb = emb[:, :dim]
  return quantize_np(emb, dtype)


def retrieval_scores(query_emb: np.ndarray, doc_emb: np.ndarray, relevant, ks: Iterable[int] = (1, 10, 100),
                     dtype: str = "float32", dims=(None,)) -> dict[str, float]:
  """Metrics of one embedding dtype at each Matryoshka prefix: ``{"<dtype>/<dim|full>/<metric>@k": value}``.

  `query_emb` [Q, D] and `doc_emb` [N, D] are float embeddings (as ``embed_texts`` returns); each dim of
  `dims` (None = all D) truncates them before the `dtype` quantisation. Already-quantised input is accepted
  for the full dimension: int8 codes with ``dtype="int8"``, packed uint8 bits with ``dtype="binary"``.
  `relevant`: any form :func:`as_relevant` accepts. Scores are computed a block of queries at a time.
  """
  if dtype not in DTYPES:
    raise EvalError(f"unknown embedding dtype {dtype!r}; expected one of {DTYPES}")
  q_all, d_all = np.asarray(query_emb), np.asarray(doc_emb)
  if q_all.ndim != 2 or d_all.ndim != 2 or q_all.shape[1] != d_all.shape[1]:
    raise EvalError(f"query and doc embeddings must be [Q, D] and [N, D] with the same D, got {q_all.shape} "
                    f"and {d_all.shape}")
  ks = [int(k) for k in ks]
  for k in ks:
    _check_k(k)
  pre_quantised = {"int8": np.int8, "binary": np.uint8}.get(dtype) == q_all.dtype
  rel = as_relevant(relevant, q_all.shape[0], d_all.shape[0])
  out: dict[str, float] = {}
  for dim in normalise_dims(dims):
    if pre_quantised:
      if dim is not None:
        raise EvalError(f"{dtype} codes given: Matryoshka dims need the float embeddings")
      q, d, bits = q_all, d_all, None
    else:
      full = q_all.shape[1]
      if dim is not None and dim > full:
        raise EvalError(f"Matryoshka dim {dim} exceeds the embedding size {full}")
      q, d = _stored(q_all, dtype, dim), _stored(d_all, dtype, dim)
      bits = dim or full
    ranks: list[np.ndarray] = []
    step = max(1, _CHUNK_ELEMENTS // max(1, d.shape[0]))
    for s in range(0, q.shape[0], step):
      scores = _clean_scores(similarity(q[s:s + step], d, dtype, bits))
      ranks.extend(_ranks(scores, rel, s))
    for name, value in metrics_from_ranks(ranks, ks).items():
      out[f"{dtype}/{dim_label(dim)}/{name}"] = value
  return out


_METRIC_NAMES = {"ndcg": "nDCG", "recall": "R", "mrr": "MRR"}


def format_table(results: Mapping[str, float], digits: int = 4) -> str:
  """A Markdown table: one row per dtype/dim, one column per metric (keys ``dtype/dim/metric``)."""
  rows: dict[tuple[str, str], dict[str, float]] = {}
  columns: list[str] = []
  for key, value in results.items():
    parts = key.split("/")
    if len(parts) != 3:
      continue
    dtype, dim, metric = parts
    rows.setdefault((dtype, dim), {})[metric] = value
    if metric not in columns:
      columns.append(metric)

  def header(m: str) -> str:
    name, _, k = m.partition("@")
    return f"{_METRIC_NAMES.get(name, name)}@{k}" if k else _METRIC_NAMES.get(name, name)

  lines = ["| dtype | dim | " + " | ".join(header(c) for c in columns) + " |",
           "|---|---:|" + "---:|" * len(columns)]
  for (dtype, dim), vals in rows.items():
    cells = [f"{vals[c]:.{digits}f}" if c in vals else "" for c in columns]
    lines.append(f"| {dtype} | {dim} | " + " | ".join(cells) + " |")
  return "\n".join(lines)
