"""Contextual-training objectives of pplx-embed-context-v1 (paper.md §4.2) as pure JAX functions over the global batch.

Inputs (row i of every array belongs to query i; all may be sharded over the batch axes, as in contrastive.py):
  q [N, D] query embeddings; c [N, C, D] the late-chunked chunk embeddings of query i's document, chunk_mask [N, C]
  marking real chunks (documents have different chunk counts); gold [N] the index of q_i's gold chunk in its
  document; d [N, D] the document embeddings; doc_hash [N] (or [N, W]) content-hash classes of the documents
  (`content_hash_ids` / `content_hash_words`).

    L_seq    = -(1/N) sum_i log e^{s(q_i,c_i*)/t} / sum_k e^{s(q_i,c_ik)/t}                 (k: real chunks of doc i)
    L_batch  = -(1/N) sum_i log e^{s(q_i,c_i*)/t} / sum_j sum_k e^{s(q_i,c_jk)/t}     (every real chunk, own doc's too)
    L_local  = alpha L_seq + (1 - alpha) L_batch                                           (alpha = 0.2)
    L_global = -(1/N) sum_i log e^{s(q_i,d_i)/t} / ( sum_j M_ij m_i(d_j) e^{s(q_i,d_j)/t}
                                                    + sum_{j!=i} m_i(q_j) e^{s(q_i,q_j)/t} )
               M_ij = 0 if h(d_i) = h(d_j) and i != j, else 1;  m_i(x) = 1[s(q_i,x) <= s(q_i,d_i) + margin]
    L_ctx    = beta L_global + (1 - beta) L_local,   beta: cosine schedule 0.2 -> 0.5 over training

Choices, where the paper is silent or loose:
  * The gold chunk always counts as real (chunk_mask | onehot(gold)): the positive is in every denominator by
    definition, and a mask that drops it would otherwise make the loss meaningless rather than fail.
  * Neither local loss uses the margin mask m_i: the paper states it for the pair and global losses only.
  * Duplicate documents in L_batch. The paper masks duplicates only in L_global, and that is the default here
    (mask_duplicate_chunks=False). With the same document in m rows, each of its chunks (the gold one included)
    appears m times among q_i's candidates: L_batch of q_i = -log e^{pos/t} / (m·own_i + others_i), which exceeds
    the duplicate-free -log e^{pos/t} / (own_i + others_i) by less than log m, and equals log m plus a loss in which
    the own document's chunks outweigh the other documents' m to 1 (stronger in-sequence negatives). Its floor is
    log m, not 0, but the gradient keeps its sign: q_i is pulled to its gold chunk with weight 1 - P, P the softmax
    mass of all m gold copies together. mask_duplicate_chunks=True drops the chunks of rows j != i with
    h(d_j) = h(d_i), making L_batch duplicate-free like L_global.
  * The q-q negatives of L_global are not duplicate-masked (the paper's formula has no M there): two queries of one
    document usually ask about different chunks and are not paraphrases; the margin mask still drops near copies.
  * Padded chunks (and zero vectors such as the span_pool of an empty span) go through `pooling.normalize`, whose
    gradient is finite at 0, so masked slots never send NaN to the encoder.

Memory: the in-batch block is [N, N*C]; like every block here it is pinned row-sharded over the batch axes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pplx_jax.core.sharding import constrain
from pplx_jax.models.pooling import normalize
from pplx_jax.objectives.contrastive import (
  batch_similarities,
  masked_logsumexp,
  mean_where,
  pair_infonce,
)

ROWS = ("act_batch", None)


# ---------------------------------------------------------------- similarities and masks


def _doc_sims(q: jax.Array, c: jax.Array) -> jax.Array:
  """Cosine of each query with the chunks of its own document: [N, D] x [N, C, D] -> [N, C] (row-local)."""
  return constrain(jnp.einsum("nd,ncd->nc", normalize(q), normalize(c)), ROWS)


def _chunk_masks(chunk_mask: jax.Array, gold: jax.Array, num_chunks: int) -> tuple[jax.Array, jax.Array]:
  """(real chunks with the gold one forced in, gold one-hot) as [N, C] bool."""
  is_gold = gold.astype(jnp.int32)[:, None] == jnp.arange(num_chunks, dtype=jnp.int32)[None, :]
  return chunk_mask.astype(bool) | is_gold, is_gold


def same_document(doc_hash: jax.Array) -> jax.Array:
  """[N] or [N, W] hash classes -> [N, N] bool, True where h(d_i) = h(d_j) (the diagonal included), rows sharded."""
  h = doc_hash if doc_hash.ndim == 2 else doc_hash[:, None]
  return constrain(jnp.all(h[:, None, :] == h[None, :, :], axis=-1), ROWS)


def _eye(n: int) -> jax.Array:
  """Row-sharded identity mask (unpinned, XLA may build it whole on every device: see contrastive.diagonal)."""
  eye = jax.lax.broadcasted_iota(jnp.int32, (n, n), 0) == jax.lax.broadcasted_iota(jnp.int32, (n, n), 1)
  return constrain(eye, ROWS)


def _inv_t(temperature) -> jax.Array:
  return 1.0 / jnp.asarray(temperature, jnp.float32)


def _row_max(s: jax.Array, where: jax.Array) -> jax.Array:
  return jnp.max(jnp.where(where, s, -jnp.inf), axis=-1)


# ---------------------------------------------------------------- losses


def in_sequence_loss(q: jax.Array, c: jax.Array, chunk_mask: jax.Array, gold: jax.Array,
                     temperature: float | jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """L_seq: the gold chunk against the other real chunks of the same document.

  Metrics: accuracy (gold chunk strictly above every other real chunk of its document; a one-chunk document counts
  as correct), pos_sim, neg_sim (other real chunks of the same document).
  """
  s = _doc_sims(q, c)
  valid, is_gold = _chunk_masks(chunk_mask, gold, c.shape[1])
  inv_t = _inv_t(temperature)
  pos = jnp.sum(jnp.where(is_gold, s, 0.0), axis=-1)
  loss = jnp.mean(masked_logsumexp([(s * inv_t, valid)]) - pos * inv_t)
  s_sg, pos_sg = jax.lax.stop_gradient(s), jax.lax.stop_gradient(pos)
  others = valid & ~is_gold
  metrics = {
      "accuracy": jnp.mean((pos_sg > _row_max(s_sg, others)).astype(jnp.float32)),
      "pos_sim": jnp.mean(pos_sg),
      "neg_sim": mean_where(s_sg, others),
  }
  return loss, metrics


def in_batch_loss(q: jax.Array, c: jax.Array, chunk_mask: jax.Array, gold: jax.Array, temperature: float | jax.Array,
                  doc_hash: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """L_batch: the gold chunk against every real chunk of every document of the global batch, its own included.

  doc_hash (None = the paper) drops the chunks of the *other* rows holding the same document (module docstring).
  Metrics: accuracy (gold chunk strictly above every other candidate), pos_sim, neg_sim (all other candidates).
  """
  n, num_chunks, dim = c.shape
  flat = constrain(c.reshape(n * num_chunks, dim), ROWS)
  s = batch_similarities(q, flat)  # [N, N*C], column j*C + k = chunk k of row j's document
  valid, _ = _chunk_masks(chunk_mask, gold, num_chunks)
  col = jax.lax.broadcasted_iota(jnp.int32, s.shape, 1)
  row = jax.lax.broadcasted_iota(jnp.int32, s.shape, 0)
  is_pos = col == row * num_chunks + gold.astype(jnp.int32)[:, None]
  keep = jnp.broadcast_to(valid.reshape(1, n * num_chunks), s.shape)
  if doc_hash is not None:
    dup = same_document(doc_hash) & ~_eye(n)
    keep = keep & ~jnp.repeat(dup, num_chunks, axis=1)
  inv_t = _inv_t(temperature)
  pos = jnp.sum(jnp.where(is_pos, s, 0.0), axis=-1)
  loss = jnp.mean(masked_logsumexp([(s * inv_t, keep | is_pos)]) - pos * inv_t)
  s_sg, pos_sg = jax.lax.stop_gradient(s), jax.lax.stop_gradient(pos)
  others = keep & ~is_pos
  metrics = {
      "accuracy": jnp.mean((pos_sg > _row_max(s_sg, others)).astype(jnp.float32)),
      "pos_sim": jnp.mean(pos_sg),
      "neg_sim": mean_where(s_sg, others),
  }
  return loss, metrics


def local_loss(q: jax.Array, c: jax.Array, chunk_mask: jax.Array, gold: jax.Array, temperature: float | jax.Array,
               alpha: float = 0.2, doc_hash: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """L_local = alpha L_seq + (1 - alpha) L_batch. Metrics: loss_seq, loss_batch, chunk_accuracy (within the
  document), batch_chunk_accuracy (within the batch), chunk_pos_sim, chunk_neg_sim (same document)."""
  l_seq, m_seq = in_sequence_loss(q, c, chunk_mask, gold, temperature)
  l_batch, m_batch = in_batch_loss(q, c, chunk_mask, gold, temperature, doc_hash)
  metrics = {
      "loss_seq": l_seq,
      "loss_batch": l_batch,
      "chunk_accuracy": m_seq["accuracy"],
      "batch_chunk_accuracy": m_batch["accuracy"],
      "chunk_pos_sim": m_seq["pos_sim"],
      "chunk_neg_sim": m_seq["neg_sim"],
  }
  return alpha * l_seq + (1.0 - alpha) * l_batch, metrics


def global_loss(q: jax.Array, d: jax.Array, doc_hash: jax.Array, temperature: float | jax.Array,
                margin: float | None = 0.1, use_qq: bool = True) -> tuple[jax.Array, dict[str, jax.Array]]:
  """L_global: query-document InfoNCE with duplicate-document masking, the false-negative margin mask (None
  disables it) and, with use_qq, the query-query negatives j != i.

  Metrics: accuracy (d_i strictly above every other non-duplicate document), pos_sim, neg_sim (non-duplicate
  documents), masked_frac (negatives, after duplicate masking, dropped by the margin), dup_frac (off-diagonal
  document pairs that are duplicates). It is the pair stage's `pair_infonce` with M_ij as its document mask.
  """
  same = same_document(doc_hash)
  loss, metrics = pair_infonce(q, d, temperature, margin=margin, use_qq=use_qq, doc_negatives=~same)
  off = ~_eye(q.shape[0])
  dup = same & off
  metrics["dup_frac"] = jnp.sum(dup.astype(jnp.float32)) / jnp.maximum(jnp.sum(off.astype(jnp.float32)), 1.0)
  return loss, metrics


def beta_schedule(step, total_steps, start: float = 0.2, end: float = 0.5) -> jax.Array:
  """Cosine ramp of the global-loss weight: start at step 0, end at total_steps (and after), monotone between."""
  frac = jnp.clip(jnp.asarray(step, jnp.float32) / jnp.maximum(jnp.asarray(total_steps, jnp.float32), 1.0), 0.0, 1.0)
  return end + (start - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))


def contextual_loss(q: jax.Array, c: jax.Array, chunk_mask: jax.Array, gold: jax.Array, d: jax.Array,
                    doc_hash: jax.Array, temperature: float | jax.Array, beta: float | jax.Array, alpha: float = 0.2,
                    margin: float | None = 0.1, use_qq: bool = True, mask_duplicate_chunks: bool = False
                    ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """L_ctx = beta L_global + (1 - beta) L_local (beta from `beta_schedule`).

  Metrics: loss_global, loss_local, loss_seq, loss_batch, beta, chunk_accuracy (gold chunk first within its
  document), batch_chunk_accuracy (first among all chunks of the batch), doc_accuracy (d_i first among the
  non-duplicate documents), chunk_pos_sim, chunk_neg_sim, doc_pos_sim, doc_neg_sim, masked_frac, dup_frac.
  """
  l_local, m_local = local_loss(q, c, chunk_mask, gold, temperature, alpha,
                                doc_hash if mask_duplicate_chunks else None)
  l_global, m_global = global_loss(q, d, doc_hash, temperature, margin, use_qq)
  beta = jnp.asarray(beta, jnp.float32)
  metrics = dict(m_local, loss_local=l_local, loss_global=l_global, beta=beta,
                 doc_accuracy=m_global["accuracy"], doc_pos_sim=m_global["pos_sim"],
                 doc_neg_sim=m_global["neg_sim"], masked_frac=m_global["masked_frac"],
                 dup_frac=m_global["dup_frac"])
  return beta * l_global + (1.0 - beta) * l_local, metrics


def contextual_objective(temperature: float, alpha: float = 0.2, margin: float | None = 0.1, use_qq: bool = True,
                         mask_duplicate_chunks: bool = False):
  """(embeddings {"q": [N, D], "c": [N, C, D], "d": [N, D]}, batch {"chunk_mask", "gold", "doc_hash", "beta"})
  -> (loss, metrics); batch["beta"] is the scheduled weight of this step (`beta_schedule`)."""

  def objective(embs, batch):
    return contextual_loss(embs["q"], embs["c"], batch["chunk_mask"], batch["gold"], embs["d"], batch["doc_hash"],
                           temperature, batch["beta"], alpha=alpha, margin=margin, use_qq=use_qq,
                           mask_duplicate_chunks=mask_duplicate_chunks)

  return objective
