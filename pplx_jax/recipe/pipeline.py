"""`pplx-jax pipeline`: the paper's whole recipe from one config (configs/pipeline/*.py).

tokenizer -> stage 1 (masked diffusion) -> stage 2 (pairs) -> stage 3a (contextual) + 3b (triplets) -> SLERP merge
-> export (Hugging Face, sentence-transformers) -> evaluation of every stage's model, the baselines and the export
by others' code -> a report (Markdown + PNG) in the workdir.

Every step writes its output atomically and records what it was made from, so a killed pipeline run again skips
finished steps and resumes the interrupted stage from its newest checkpoint (the trainer's own resume). A finished
step whose recorded inputs differ from the config's (a changed stage config, a re-trained parent) is an error that
names it, rather than a silent mix of old and new models.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from pplx_jax.core import config as config_lib
from pplx_jax.core import paths
from pplx_jax.core.config import ConfigError
from pplx_jax.recipe.plan import (
  PER_QUERY,
  Plan,
  check_done,
  digest,
  is_main,
  log,
  mark_done,
  read_json,
  write_json,
)

# ---------------------------------------------------------------------------------------------
# Steps


def tokenizer_texts(names, validation_fraction: float = 0.05, seed: int = 0) -> list[str]:
  """The training split's pretraining documents of the local corpora `names` (Plan.tokenizer_corpus): what the tiny
  pipeline's tokenizer is trained on (held-out keys stay unseen, as in every stage)."""
  from pplx_jax.stages.pretrain.prepare import local_text_records
  return [ex["text"] for name in names for split, _, ex in local_text_records(name, validation_fraction, seed)
          if split == "train"]


def prepare_tokenizer(plan: Plan) -> None:
  """Train the tiny pipeline's BPE tokenizer on `tokenizer.corpus` (a pod pipeline names Qwen3's instead; a pipeline
  from pretrained weights takes the model's own, `tokenizer.from_model`)."""
  if plan.cfg.tokenizer.path:
    if not plan.tokenizer.exists():
      raise FileNotFoundError(f"tokenizer.path={plan.tokenizer} does not exist")
    return
  if (plan.tokenizer / "tokenizer.json").is_file():
    return
  source = str(plan.cfg.tokenizer.get("from_model", "") or "")
  if source:
    from pplx_jax.convert import load as load_lib
    from pplx_jax.core import checkpoint as ckpt
    tok_dir = load_lib.resolve_model(source).tokenizer_dir
    if tok_dir is None:
      raise ConfigError(f"tokenizer.from_model={source}: no tokenizer files found beside the model")
    paths.rmtree(plan.tokenizer)  # an incomplete one (no tokenizer.json): redo it whole
    with paths.staged_output(plan.tokenizer) as tmp:
      ckpt.copy_tokenizer(tok_dir, tmp)
    log(f"tokenizer: the model's own, from {source}")
    return
  from pplx_jax.core.tokenizers import train_byte_level_bpe
  data = plan.stage_cfgs[plan.order[0]].data if plan.order else None
  split = dict(validation_fraction=float(data.validation_fraction), seed=int(data.split_seed)) if data else {}
  texts = tokenizer_texts(plan.tokenizer_corpus, **split)
  corpus_name = "+".join(plan.tokenizer_corpus)
  log(f"training a byte-level BPE tokenizer ({plan.cfg.tokenizer.vocab_size} ids) on {len(texts)} {corpus_name} "
      "texts (training split)")
  paths.rmtree(plan.tokenizer)  # an incomplete one (no tokenizer.json): redo it whole
  # The trainer reads a local corpus file; the tokenizer folder appears (or is uploaded) only when complete.
  with tempfile.TemporaryDirectory(prefix="pplx-tokenizer-corpus-") as d, paths.staged_output(plan.tokenizer) as tmp:
    corpus = Path(d) / "tokenizer_corpus.txt"
    corpus.write_text("\n".join(t.replace("\n", " ") for t in texts) + "\n")
    train_byte_level_bpe([str(corpus)], tmp, vocab_size=int(plan.cfg.tokenizer.vocab_size))


def _stage_inputs(plan: Plan, name: str, done_inputs: dict[str, dict]) -> dict:
  parent = str(plan.cfg.stages[name].init_from)
  return {"config": json.loads(config_lib.to_json(plan.stage_cfgs[name])),
          "parent": digest(done_inputs[parent]) if parent in done_inputs else parent}


def run_stages(plan: Plan) -> dict[str, dict]:
  from pplx_jax.stages import registry
  done: dict[str, dict] = {}
  for name in plan.order:
    inputs = _stage_inputs(plan, name, done)
    out = plan.model_dir(name)
    if check_done(out, inputs, f"stage {name!r}"):
      log(f"stage {name}: already complete, skipped")
    else:
      log(f"stage {name}: {plan.cfg.stages[name].config} from {plan.cfg.stages[name].init_from or 'random init'}")
      t0 = time.time()
      result = registry.run_stage(plan.stage_cfgs[name], out)
      if is_main():
        mark_done(out, inputs, step=int(result.step), seconds=round(time.time() - t0, 1))
    done[name] = inputs
  return done


def merge_step(plan: Plan, done: dict[str, dict]) -> Path:
  from pplx_jax.convert import merge
  m = plan.cfg.merge
  out = plan.model_dir(str(m.name))
  inputs = {"a": digest(done[str(m.a)]), "b": digest(done[str(m.b)]), "t": float(m.t)}
  if check_done(out, inputs, "the merge"):
    log(f"merge: {out} already complete, skipped")
  else:
    paths.rmtree(out)  # a merge interrupted before its marker: redo it whole
    log(f"merge: SLERP({m.a}, {m.b}, t={m.t}) -> {out}")
    merge.merge_checkpoints(plan.model_dir(str(m.a)), plan.model_dir(str(m.b)), float(m.t), out)
    mark_done(out, inputs)
  done[str(m.name)] = inputs
  return out


def export_step(plan: Plan, done: dict[str, dict]) -> dict[str, Path]:
  from pplx_jax.convert import formats
  name = str(plan.cfg.export.model)
  out = plan.work / "export"
  inputs = {"model": digest(done[name]), "formats": list(plan.cfg.export.formats)}
  outs = {fmt: out / fmt for fmt in plan.cfg.export.formats}
  if check_done(out, inputs, "the export"):
    log(f"export: {out} already complete, skipped")
    return outs
  paths.rmtree(out)
  fns = {"hf": formats.to_hf, "st": formats.to_st}
  for fmt, path in outs.items():
    if fmt not in fns:
      raise ConfigError(f"export.formats has {fmt!r}; known: {sorted(fns)}")
    fns[fmt](str(plan.model_dir(name)), str(path))
    log(f"export: {name} -> {path}")
  mark_done(out, inputs)
  return outs


# ---------------------------------------------------------------------------------------------
# Evaluation


def _positive(n) -> int | None:
  """Config convention: a size <= 0 means "all" / "full"."""
  return int(n) if int(n) > 0 else None


def _dims(plan: Plan) -> list[int | None]:
  return [_positive(d) for d in plan.cfg.eval.dims]


def _eval_sets(plan: Plan):
  from pplx_jax.stages.contextual import evalset as ctx_evalset
  from pplx_jax.stages.contrastive import evalset as pair_evalset
  ev = plan.cfg.eval
  retrieval_set = pair_evalset.load_retrieval_set(str(ev.data), str(ev.split), max_queries=_positive(ev.max_queries),
                                                  max_docs=_positive(ev.max_docs))
  contextual_set = None
  if ev.contextual_data:
    contextual_set = ctx_evalset.load_retrieval_set(str(ev.contextual_data), str(ev.split),
                                                 max_docs=_positive(ev.contextual_max_docs))
  return retrieval_set, contextual_set


def evaluate_model(plan: Plan, name: str, sets, path: str | None = None, pooling: str | None = None,
                   attention: str | None = None, contextual_eval: bool = True) -> dict:
  """Retrieval metrics (every dtype and Matryoshka prefix), per-query float32 nDCG@10 and, for mean-pooled models,
  late chunking vs chunks alone on the contextual set. Embeddings use the model's own pooling (the causal +
  last-token ablation differs) unless `pooling` / `attention` say otherwise (the zero-shot rows: the start model
  used as a decoder or as an encoder); `path` defaults to the stage's model."""
  from pplx_jax.core import sharding as shd
  from pplx_jax.eval import contextual
  from pplx_jax.eval import metrics as eval_metrics
  from pplx_jax.inference import load as inference_load
  from pplx_jax.inference.embed import embed_with_model
  ev = plan.cfg.eval
  (queries, docs, qrels), ctx = sets
  pooling = pooling or plan.pooling(name)
  t0 = time.time()
  model, _, tok, mesh, rules = inference_load.load(path or str(plan.model_dir(name)), attention=attention)
  out: dict[str, Any] = {"retrieval": {}}
  with shd.activate(mesh, rules):
    emb = embed_with_model(model, tok, list(queries) + list(docs), pooling, int(ev.max_length), int(ev.batch_size))
    for dt in ev.dtypes:
      out["retrieval"].update(eval_metrics.retrieval_scores(emb[:len(queries)], emb[len(queries):], qrels,
                                                            tuple(ev.ks), str(dt), _dims(plan)))
    out["per_query"] = {PER_QUERY: _per_query_ndcg10(emb[:len(queries)], emb[len(queries):], qrels)}
    if contextual_eval and ctx is not None and pooling == "mean":
      cq, cdocs, cqrels = ctx
      out["contextual"] = contextual.evaluate_with_model(
          model, tok, cq, cdocs, cqrels, list(ev.dtypes), (None,), tuple(ev.ks), batch_size=int(ev.batch_size),
          max_length=int(ev.max_length), multiple=mesh.size)
  out["seconds"] = round(time.time() - t0, 1)
  return out


def _per_query_ndcg10(q: np.ndarray, d: np.ndarray, qrels) -> list[float]:
  from pplx_jax.eval import metrics as eval_metrics
  return _per_query_from_scores(eval_metrics.similarity(q, d, "float32"), qrels)


def _per_query_from_scores(scores: np.ndarray, qrels) -> list[float]:
  from pplx_jax.eval import metrics as eval_metrics
  return [float(x) for x in eval_metrics.ndcg_at_k(scores, qrels, 10, per_query=True)]


def zero_shot_rows(plan: Plan) -> list[tuple[str, str, str]]:
  """(row name, attention, pooling) of every zero-shot row: the start model evaluated before any training."""
  rows = []
  zero_shot = plan.cfg.get("zero_shot", None)
  for spec in (zero_shot.rows if zero_shot is not None else ()):
    attention, _, pooling = str(spec).partition("+")
    rows.append((f"zero-shot {spec}", attention, pooling))
  return rows


def evaluate_baselines(plan: Plan, sets) -> dict:
  from pplx_jax.eval import baselines
  from pplx_jax.eval import metrics as eval_metrics
  ev = plan.cfg.eval
  (queries, docs, qrels), ctx = sets
  ks = tuple(ev.ks)
  chunks = [c for d in ctx[1] for c in d] if ctx is not None else []

  def bm25(qs, texts, relevant, prefix):
    ranks = eval_metrics.relevant_ranks(baselines.bm25_scores(qs, texts), eval_metrics.as_relevant(relevant, len(qs),
                                                                                                   len(texts)))
    return {f"{prefix}bm25/full/{k}": v for k, v in eval_metrics.metrics_from_ranks(ranks, ks).items()}

  def dense(emb, n, relevant, prefix):
    return {f"{prefix}{k}": v for dt in ev.dtypes
            for k, v in eval_metrics.retrieval_scores(emb[:n], emb[n:], relevant, ks, str(dt)).items()}

  out: dict[str, dict] = {}
  if "bm25" in ev.baselines:
    out["BM25"] = {"retrieval": bm25(queries, docs, qrels, ""),
                   "per_query": {PER_QUERY: _per_query_from_scores(baselines.bm25_scores(queries, docs), qrels)}}
    if ctx is not None:
      cq, cdocs, cqrels = ctx
      # BM25 sees each chunk alone (its non-contextual row) and each chunk with its whole document's words.
      whole = [" ".join(d) for d in cdocs for _ in d]
      out["BM25"]["contextual"] = {**bm25(cq, chunks, cqrels, "non_contextual/"),
                                   **bm25(cq, whole, cqrels, "contextual/")}
  if "minilm" in ev.baselines:
    path = baselines.minilm_path()
    emb = baselines.sentence_transformer_embeddings(path, list(queries) + list(docs))
    out["MiniLM-L6-v2"] = {"retrieval": dense(emb, len(queries), qrels, ""),
                           "per_query": {PER_QUERY: _per_query_ndcg10(emb[:len(queries)], emb[len(queries):], qrels)}}
    if ctx is not None:  # MiniLM has no late chunking: chunks alone only
      cq, _, cqrels = ctx
      emb = baselines.sentence_transformer_embeddings(path, list(cq) + chunks)
      out["MiniLM-L6-v2"]["contextual"] = dense(emb, len(cq), cqrels, "non_contextual/")
  return out


def parity_step(plan: Plan, export: dict[str, Path], sets, own: dict) -> dict:
  """The exported model scored by stock sentence-transformers and by mteb, against pplx-jax's own numbers."""
  from pplx_jax.eval import baselines
  from pplx_jax.eval import metrics as eval_metrics
  (queries, docs, qrels), _ = sets
  out: dict[str, Any] = {"pplx-jax": own["retrieval"]["float32/full/ndcg@10"]}
  if "st" in export:
    from pplx_jax.inference.embed import embed_texts
    texts = list(queries) + list(docs)
    # Truncated as pplx-jax's own evaluation was: texts longer than eval.max_length otherwise differ by construction.
    st_dir = paths.cached_local_copy(export["st"])  # sentence-transformers reads local folders only
    emb = baselines.sentence_transformer_embeddings(str(st_dir), texts, max_length=int(plan.cfg.eval.max_length))
    st = eval_metrics.retrieval_scores(emb[:len(queries)], emb[len(queries):], qrels, tuple(plan.cfg.eval.ks))
    out["sentence-transformers"] = st["float32/full/ndcg@10"]
    sample = list(range(0, len(texts), max(1, len(texts) // 256)))
    ours = embed_texts(str(plan.model_dir(str(plan.cfg.export.model))), [texts[i] for i in sample],
                       max_length=int(plan.cfg.eval.max_length))
    out["max_abs_embedding_diff"] = float(np.abs(emb[sample] - ours).max())
    # The scale-free figure: these are unnormalised pooled states, whose size (and so the absolute error that
    # float32 op-order differences leave after 30 layers) depends on the model and the texts.
    rel = np.linalg.norm(emb[sample] - ours, axis=1) / np.maximum(np.linalg.norm(ours, axis=1), 1e-12)
    out["max_rel_embedding_diff"] = float(rel.max())
    out["median_rel_embedding_diff"] = float(np.median(rel))
    if plan.cfg.eval.mteb:
      import mteb
      from sentence_transformers import SentenceTransformer

      from pplx_jax.eval import mteb_adapter
      task = mteb_adapter.local_retrieval_task(list(queries), list(docs), qrels)
      st_model = SentenceTransformer(str(st_dir), device="cpu")
      st_model.max_seq_length = int(plan.cfg.eval.max_length)
      model = mteb.models.SentenceTransformerEncoderWrapper(st_model)
      scores = mteb_adapter.task_scores(mteb.evaluate(model, task, cache=None))
      out["mteb"] = float(scores["ndcg_at_10"])
  return out


def _cached(path: Path, inputs: dict, what: str, compute) -> Any:
  """The results stored at `path` if they were computed from `inputs`; otherwise compute and store them."""
  if path.is_file():
    stored = read_json(path)
    if stored.get("inputs") == json.loads(json.dumps(inputs, sort_keys=True, default=str)):
      return stored["results"]
  log(f"eval: {what}")
  results = compute()
  write_json(path, {"inputs": inputs, "results": results})
  return results


def run_eval(plan: Plan, done: dict[str, dict], export: dict[str, Path]) -> dict:
  ev_dir = plan.work / "eval"
  ev_inputs = json.loads(config_lib.to_json(plan.cfg.eval))
  sets = None

  def eval_sets():  # loaded once, and only when something is not cached
    nonlocal sets
    sets = sets or _eval_sets(plan)
    return sets

  results: dict[str, Any] = {"models": {}, "zero_shot": {}}
  start = str(plan.cfg.zero_shot.model) if "zero_shot" in plan.cfg else ""
  for row, attention, pooling in zero_shot_rows(plan):
    results["zero_shot"][row] = _cached(
        ev_dir / f"{row.replace(' ', '_').replace('+', '_')}.json",
        {"model": start, "attention": attention, "pooling": pooling, "eval": ev_inputs}, row,
        lambda: evaluate_model(plan, row, eval_sets(), path=start, pooling=pooling, attention=attention,
                               contextual_eval=False))
  for name in plan.models:
    results["models"][name] = _cached(ev_dir / f"{name}.json", {"model": digest(done[name]), "eval": ev_inputs},
                                      name, lambda: evaluate_model(plan, name, eval_sets()))
  results["baselines"] = _cached(ev_dir / "baselines.json", ev_inputs, f"baselines {list(plan.cfg.eval.baselines)}",
                                 lambda: evaluate_baselines(plan, eval_sets()))
  name = str(plan.cfg.export.model)
  if name in results["models"]:
    parity = results["parity"] = _cached(
        ev_dir / "parity.json", {"model": digest(done[name]), "eval": ev_inputs},
        "the export with stock sentence-transformers and mteb",
        lambda: parity_step(plan, export, eval_sets(), results["models"][name]))
    diffs = [abs(v - parity["pplx-jax"]) for k, v in parity.items() if not k.endswith("_embedding_diff")]
    if max(diffs) > float(plan.cfg.eval.parity_tolerance):  # checked on cached results too
      raise RuntimeError(f"the exported model's nDCG@10 differs between evaluators beyond "
                         f"{plan.cfg.eval.parity_tolerance}: {parity}")
  return results


# ---------------------------------------------------------------------------------------------
# Entry point


def run_pipeline(cfg: ml_collections.ConfigDict, workdir: str | os.PathLike) -> Path:
  import jax
  work = paths.as_path(workdir)  # local (relative stays relative) or gs://
  plan = Plan(cfg, work)
  plan.validate(jax.device_count())  # every stage's sizes and keys checked before anything trains
  work.mkdir(parents=True, exist_ok=True)
  config_lib.save_config(cfg, work, "pipeline_config.json")
  t0 = time.time()
  prepare_tokenizer(plan)
  done = run_stages(plan)
  if not is_main():  # on a pod every process trains; the merge, export, evaluation and report are process 0's
    return work / "report.md"
  merge_step(plan, done)
  export = export_step(plan, done)
  results = run_eval(plan, done, export)
  from pplx_jax.recipe import report
  path = report.write_pipeline_report(plan, results)
  log(f"done in {time.time() - t0:.0f} s; report: {path}")
  return path
