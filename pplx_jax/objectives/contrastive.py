"""Contrastive objectives of pplx-embed's pair and triplet stages (paper.md §4.1, §4.3) as pure JAX functions.

Every function here is written over the *global* batch: q, d (and hard negatives) hold the rows of all devices.
Under `jax.jit` with batch-sharded inputs the compiler inserts the collectives (an all-gather of the candidate
embeddings, a reduce-scatter of their cotangents), so every query sees every document and query of every device and
the gradient that reaches each device's encoder is exact (pattern C of embedding.md §2.6). No pmap, no shard_map.

Similarities are cosine, in float32, on the embeddings as given (int8 codes during QAT: `embed`).

    L_pair = -(1/N) sum_i log e^{s(q_i,d_i)/t} / ( e^{s(q_i,d_i)/t} + sum_{j!=i} m_i(d_j) e^{s(q_i,d_j)/t}
                                                                    + sum_{j!=i} m_i(q_j) e^{s(q_i,q_j)/t} )
    m_i(x) = 1[ s(q_i,x) <= s(q_i,d_i) + margin ]        (margin 0.1; computed under stop_gradient)

    L_triplet = -(1/N) sum_i log e^{s(q_i,d_i)/t} / ( sum_j e^{s(q_i,d_j)/t} + sum_j sum_k e^{s(q_i,h_jk)/t} )

i.e. the triplet denominator holds every in-batch document and the hard negatives of *every* query of the global
batch. Hard negatives stay [N, K, D] indexed by their query, so no layout is inferred after a gather (the interleaving
bug of embedding.md §2.6 cannot happen: the label of query i is always column i of the query-document block).

Memory: the [N, N] (and [N, N*K]) similarity blocks are the only O(N^2) tensors. At N = 65,536 one float32 block is
65,536^2 x 4 B = 17.2 GB in total; `batch_similarities` pins them row-sharded over the batch axes ("act_batch" -> data x fsdp), so
each device holds N/devices rows of each block (268 MB per device on 64 devices). Measured on 8 CPU devices at
N = 4096, D = 64: pair loss + gradient (q-d and q-q blocks) needs 27 MB of temporaries per device, about 3.3 row
blocks of 8.4 MB (one unsharded block would be 67 MB); the triplet loss with K = 3 (an extra [N, 3N] block) 65 MB.
The encoder activations, not these blocks, are what GradCache removes (objectives/gradcache.py); beyond ~10^5 rows
the blocks themselves would need tiling (embedding.md §2.8).
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from pplx_jax.core.sharding import constrain
from pplx_jax.models.pooling import cosine_similarity, pool
from pplx_jax.models.quantize import int8_ste, truncate

QUANTIZE = ("int8", "none")


def batch_similarities(a: jax.Array, b: jax.Array) -> jax.Array:
  """Cosine [Na, D] x [Nb, D] -> [Na, Nb] float32, rows sharded over the batch axes (each device: its queries x all
  candidates)."""
  return constrain(cosine_similarity(a, b), ("act_batch", None))


def margin_mask(s: jax.Array, pos: jax.Array, margin: float | None) -> jax.Array:
  """m_i(x) = 1[s(q_i,x) <= s(q_i,d_i) + margin] under stop_gradient; all True when margin is None."""
  if margin is None:
    return jnp.ones(s.shape, bool)
  return jax.lax.stop_gradient(s) <= jax.lax.stop_gradient(pos)[:, None] + margin


def masked_logsumexp(blocks: Sequence[tuple[jax.Array, jax.Array]]) -> jax.Array:
  """log sum over all blocks of exp(logits) where valid, per row. Every row must have one valid entry (the positive).

  Invalid entries become -inf *before* the exp (so neither the value nor the gradient can overflow or give NaN: a
  dropped false negative may sit far above the row's maximum), and the shift is the row max of the valid entries.
  """
  masked = [jnp.where(valid, logits, -jnp.inf) for logits, valid in blocks]
  m = jax.lax.stop_gradient(jnp.max(jnp.stack([jnp.max(x, axis=-1) for x in masked]), axis=0))
  total = sum(jnp.sum(jnp.exp(x - m[:, None]), axis=-1) for x in masked)
  return m + jnp.log(total)


def diagonal(s: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(diagonal [N], identity mask [N, N]) of a row-sharded [N, N] block; the diagonal is a row reduction, so it
  stays sharded like the rows. The mask is pinned row-sharded too: left to propagation, reductions over it (the
  negative counts) made XLA build it unsharded, a full [N, N] float32 on every device (16 GiB at N = 65,536;
  benchmarks/contrastive_scale.py)."""
  eye = jax.lax.broadcasted_iota(jnp.int32, s.shape, 0) == jax.lax.broadcasted_iota(jnp.int32, s.shape, 1)
  eye = constrain(eye, ("act_batch", None))
  return jnp.sum(jnp.where(eye, s, 0.0), axis=-1), eye


def mean_where(x: jax.Array, where: jax.Array) -> jax.Array:
  w = where.astype(jnp.float32)
  return jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1.0)


def pair_infonce(q: jax.Array, d: jax.Array, temperature: float | jax.Array, margin: float | None = 0.1,
                 use_qq: bool = True, doc_negatives: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Stage-1 loss (paper §4.1). q, d: [N, D] embeddings of the global batch, row i of d is q_i's positive.

  margin=None disables the false-negative mask; use_qq=False drops the query-query negatives (plain InfoNCE).
  doc_negatives [N, N] (None = all j != i) restricts which in-batch documents are negatives of query i (the
  contextual stage's duplicate-document mask M_ij); the query-query negatives are not affected.
  Returns (loss, metrics): accuracy (the positive scores strictly above every other candidate document), pos_sim,
  neg_sim (mean over the document negatives), masked_frac (negatives dropped by the margin mask).
  """
  s_qd = batch_similarities(q, d)
  pos, eye = diagonal(s_qd)
  off = ~eye
  cand = off if doc_negatives is None else off & doc_negatives
  inv_t = 1.0 / jnp.asarray(temperature, jnp.float32)
  keep_d = margin_mask(s_qd, pos, margin) & cand
  blocks = [(s_qd * inv_t, keep_d | eye)]
  n_neg = jnp.sum(cand.astype(jnp.float32))
  n_drop = jnp.sum((cand & ~keep_d).astype(jnp.float32))
  if use_qq:
    s_qq = batch_similarities(q, q)
    keep_q = margin_mask(s_qq, pos, margin) & off
    blocks.append((s_qq * inv_t, keep_q))
    n_neg = n_neg + jnp.sum(off.astype(jnp.float32))
    n_drop = n_drop + jnp.sum((off & ~keep_q).astype(jnp.float32))
  loss = jnp.mean(masked_logsumexp(blocks) - pos * inv_t)
  s_sg = jax.lax.stop_gradient(s_qd)
  pos_sg = jax.lax.stop_gradient(pos)
  best_other = jnp.max(jnp.where(cand, s_sg, -jnp.inf), axis=-1)
  metrics = {
      "accuracy": jnp.mean((pos_sg > best_other).astype(jnp.float32)),
      "pos_sim": jnp.mean(pos_sg),
      "neg_sim": mean_where(s_sg, cand),
      "masked_frac": n_drop / jnp.maximum(n_neg, 1.0),
  }
  return loss, metrics


def triplet_infonce(q: jax.Array, d: jax.Array, hard_negs: jax.Array, temperature: float | jax.Array,
                    margin: float | None = None, use_qq: bool = False, hard_neg_mask: jax.Array | None = None
                    ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Stage-2b loss (paper §4.3). q, d: [N, D]; hard_negs: [N, K, D], row j holds the K hard negatives of query j.

  The denominator of query i sums every in-batch document d_j (its positive included) and every hard negative h_jk
  of every query j of the global batch. hard_neg_mask [N, K] (True/1 = real) excludes padding negatives (variable K).
  margin (off by default; the paper does not say) applies the pair stage's false-negative mask to the documents
  j != i and to all hard negatives; use_qq adds the query-query negatives.
  Metrics: accuracy (positive above every other document and every valid hard negative), hard_accuracy (positive
  above the query's own valid hard negatives), pos_sim, neg_sim, hard_neg_sim (own valid negatives), masked_frac.
  """
  n, k, dim = hard_negs.shape
  if hard_neg_mask is None:
    hard_neg_mask = jnp.ones((n, k), bool)
  hard_neg_mask = hard_neg_mask.astype(bool)
  s_qd = batch_similarities(q, d)
  pos, eye = diagonal(s_qd)
  off = ~eye
  s_qh = batch_similarities(q, constrain(hard_negs.reshape(n * k, dim), ("act_batch", None)))  # [N, N*K], column j*K + k
  # masks pinned row-sharded like the block (see `diagonal`: left to propagation they may come out whole)
  real_h = constrain(jnp.broadcast_to(hard_neg_mask.reshape(1, n * k), s_qh.shape), ("act_batch", None))
  inv_t = 1.0 / jnp.asarray(temperature, jnp.float32)
  keep_d = margin_mask(s_qd, pos, margin) & off
  keep_h = margin_mask(s_qh, pos, margin) & real_h
  blocks = [(s_qd * inv_t, keep_d | eye), (s_qh * inv_t, keep_h)]
  n_neg = jnp.sum(off.astype(jnp.float32)) + jnp.sum(real_h.astype(jnp.float32))
  n_drop = jnp.sum((off & ~keep_d).astype(jnp.float32)) + jnp.sum((real_h & ~keep_h).astype(jnp.float32))
  if use_qq:
    s_qq = batch_similarities(q, q)
    keep_q = margin_mask(s_qq, pos, margin) & off
    blocks.append((s_qq * inv_t, keep_q))
    n_neg = n_neg + jnp.sum(off.astype(jnp.float32))
    n_drop = n_drop + jnp.sum((off & ~keep_q).astype(jnp.float32))
  loss = jnp.mean(masked_logsumexp(blocks) - pos * inv_t)

  s_sg, h_sg, pos_sg = (jax.lax.stop_gradient(x) for x in (s_qd, s_qh, pos))
  own = constrain((jax.lax.broadcasted_iota(jnp.int32, s_qh.shape, 1) // k
                   == jax.lax.broadcasted_iota(jnp.int32, s_qh.shape, 0)), ("act_batch", None)) & real_h
  best_doc = jnp.max(jnp.where(off, s_sg, -jnp.inf), axis=-1)
  best_hard = jnp.max(jnp.where(real_h, h_sg, -jnp.inf), axis=-1)
  best_own = jnp.max(jnp.where(own, h_sg, -jnp.inf), axis=-1)
  metrics = {
      "accuracy": jnp.mean(((pos_sg > best_doc) & (pos_sg > best_hard)).astype(jnp.float32)),
      "hard_accuracy": jnp.mean((pos_sg > best_own).astype(jnp.float32)),
      "pos_sim": jnp.mean(pos_sg),
      "neg_sim": mean_where(s_sg, off),
      "hard_neg_sim": mean_where(h_sg, own),
      "masked_frac": n_drop / jnp.maximum(n_neg, 1.0),
  }
  return loss, metrics


def matryoshka(loss_fn: Callable[..., tuple[jax.Array, dict]], dims: Sequence[int | None],
               weights: Sequence[float] | None = None) -> Callable[..., tuple[jax.Array, dict]]:
  """Wrap a loss over embeddings into sum_m w_m * loss(truncate(x, dim_m)) (MRL, embedding.md §4.1).

  Every positional argument of the wrapped loss is an embedding array truncated on its last axis (before the
  cosine's normalisation, which happens inside the loss); keyword arguments pass through unchanged. `None` (or a dim
  >= the embedding size) is the full embedding. Weights default to 1. Metrics are those of the first dim, plus
  `loss@{dim}` for every dim ("loss@full" for None).
  """
  dims = list(dims)
  if not dims:
    raise ValueError("matryoshka: dims must not be empty (use [None] for the full embedding only)")
  weights = [1.0] * len(dims) if weights is None else [float(w) for w in weights]
  if len(weights) != len(dims):
    raise ValueError(f"matryoshka: {len(dims)} dims {dims} but {len(weights)} weights {weights}")
  if any(d is not None and int(d) <= 0 for d in dims):
    raise ValueError(f"matryoshka: dims must be positive or None, got {dims}")

  def wrapped(*embeddings, **kwargs):
    total, first = 0.0, None
    per_dim = {}
    for dim, w in zip(dims, weights):
      loss, metrics = loss_fn(*(truncate(x, dim) for x in embeddings), **kwargs)
      total = total + w * loss
      per_dim[f"loss@{'full' if dim is None else int(dim)}"] = loss
      if first is None:
        first = metrics
    return total, dict(first, **per_dim)

  return wrapped


def embed(model, input_ids: jax.Array, attention_mask: jax.Array, quantize: str = "int8",
          pooling: str = "mean") -> jax.Array:
  """Embeddings [B, D] float32: mean pool of the encoder's final hidden states over real tokens, then (QAT, paper
  §3.2) int8 codes round(127 tanh(x)) with tanh's gradient (straight-through), or the raw mean when "none".
  pooling="last" takes the last real token instead (the paper's causal baseline)."""
  if quantize not in QUANTIZE:
    raise ValueError(f"quantize={quantize!r} is not one of {QUANTIZE}")
  hidden = model(input_ids, attention_mask)
  pooled = constrain(pool(hidden, attention_mask, pooling), ("act_batch", None))
  return int8_ste(pooled) if quantize == "int8" else pooled


# ---- losses over a dict of tower embeddings (what GradCache and a Task call) ----


def pair_objective(temperature: float, margin: float | None = 0.1, use_qq: bool = True,
                   mrl_dims: Sequence[int | None] | None = None, mrl_weights: Sequence[float] | None = None):
  """(embeddings {"q": [N, D], "d": [N, D]}, batch) -> (loss, metrics), Matryoshka-wrapped when mrl_dims is set."""
  fn = lambda q, d: pair_infonce(q, d, temperature, margin=margin, use_qq=use_qq)
  if mrl_dims:
    fn = matryoshka(fn, mrl_dims, mrl_weights)
  return lambda embs, batch=None: fn(embs["q"], embs["d"])


def triplet_objective(temperature: float, margin: float | None = None, use_qq: bool = False,
                      mrl_dims: Sequence[int | None] | None = None, mrl_weights: Sequence[float] | None = None,
                      mask_key: str = "h_valid"):
  """(embeddings {"q": [N, D], "d": [N, D], "h": [N, K, D] or query-major [N*K, D]}, batch) -> (loss, metrics);
  batch[mask_key] [N, K], when present, marks the real hard negatives."""

  def base(q, d, h, hard_neg_mask=None):
    return triplet_infonce(q, d, h, temperature, margin=margin, use_qq=use_qq, hard_neg_mask=hard_neg_mask)

  fn = matryoshka(base, mrl_dims, mrl_weights) if mrl_dims else base

  def objective(embs, batch=None):
    mask = None if batch is None else batch.get(mask_key)
    q, h = embs["q"], embs["h"]
    if h.ndim == 2:  # flattened [N*K, D], query-major: a local reshape back to [N, K, D]
      h = constrain(h.reshape(q.shape[0], -1, h.shape[-1]), ("act_batch", None, None))
    return fn(q, embs["d"], h, hard_neg_mask=mask)

  return objective
