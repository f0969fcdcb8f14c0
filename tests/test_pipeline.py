"""`pplx-jax pipeline`: the stage graph is checked before anything runs, finished steps are skipped on a rerun,
changed inputs are refused, and the report carries every section with the export's parity."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pplx_jax.core import config as config_lib
from pplx_jax.core.config import ConfigError
from pplx_jax.eval import baselines
from pplx_jax.recipe import pipeline
from pplx_jax.recipe import plan as plan_lib

REPO = Path(__file__).resolve().parent.parent


def _tiny(**eval_over):
  cfg = config_lib.load_config(REPO / "configs/pipeline/tiny.py")
  with cfg.unlocked():
    for k, v in eval_over.items():
      cfg.eval[k] = v
  return cfg


def test_plan_resolves_every_stage_against_the_workdir(tmp_path):
  plan = plan_lib.Plan(_tiny(), tmp_path)
  assert plan.order == ["pretrain", "pair", "contextual", "triplet", "ablation_causal_last"]
  pair = plan.stage_cfgs["pair"]
  assert pair.train.init_from == str(tmp_path / "pretrain")
  assert pair.data.dir == str(tmp_path / "data") and pair.data.tokenizer == str(tmp_path / "tokenizer")
  assert plan.stage_cfgs["pretrain"].train.init_from == ""
  assert plan.stage_cfgs["contextual"].train.init_from == str(tmp_path / "pair")
  ab = plan.stage_cfgs["ablation_causal_last"]
  assert ab.model.attention == "causal" and ab.objective.pooling == "last"
  assert plan.pooling("ablation_causal_last") == "last" and plan.pooling("merged") == "mean"
  # Same budget as the stage it ablates: only attention and pooling differ.
  assert ab.train.steps == pair.train.steps and ab.train.global_batch == pair.train.global_batch
  plan.validate(8)


@pytest.mark.parametrize("edit, message", [
    (lambda c: setattr(c, "order", ("pretrain", "pairs")), "'pairs'"),
    (lambda c: setattr(c, "order", ("pair", "pretrain")), "does not come before"),
    (lambda c: setattr(c.merge, "a", "nope"), "merge.a='nope'"),
    (lambda c: setattr(c.eval, "models", ("pair", "finetuned")), "finetuned"),
    (lambda c: setattr(c.stages.pair, "overrides", ("--config.train.stepz=3",)), "stage 'pair'"),
    (lambda c: setattr(c.merge, "t", 1.5), "merge.t"),
    (lambda c: setattr(c.tokenizer, "corpus", "wordnet+manpages"), "manpages.*held out for evaluation"),
    (lambda c: setattr(c.tokenizer, "corpus", "wordnet+wikipedia"), "unknown corpus .*wikipedia"),
    (lambda c: setattr(c.tokenizer, "corpus", "apt+apt"), "a corpus named twice"),
])
def test_plan_rejects_configs_that_cannot_work(tmp_path, edit, message):
  cfg = _tiny()
  with cfg.unlocked():
    edit(cfg)
  with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
    plan_lib.Plan(cfg, tmp_path)


def test_stage_sizes_are_validated_before_training(tmp_path):
  cfg = _tiny()
  with cfg.unlocked():
    cfg.stages.pair.overrides = ("--config.train.global_batch=12",)
  with pytest.raises(ConfigError, match=r"(?s)stage 'pair'.*12"):
    plan_lib.Plan(cfg, tmp_path).validate(8)


def _bm25_reference(queries, docs, k1=1.2, b=0.75):
  """Okapi BM25 written out term by term from its textbook definition (Lucene idf)."""
  toks = [d.lower().replace(",", " ").replace(".", " ").split() for d in docs]
  avgdl = sum(len(t) for t in toks) / len(toks)
  out = np.zeros((len(queries), len(docs)))
  for i, q in enumerate(queries):
    for term in q.lower().split():
      df = sum(term in t for t in toks)
      idf = math.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
      for j, t in enumerate(toks):
        tf = t.count(term)
        out[i, j] += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(t) / avgdl))
  return out


def test_bm25_matches_the_formula():
  docs = ["the cat sat on the mat", "a dog, a cat and a bird.", "dogs bark", "the the the"]
  queries = ["cat", "the dog", "bird cat cat", "unseen"]
  got = baselines.bm25_scores(queries, docs)
  np.testing.assert_allclose(got, _bm25_reference(queries, docs), rtol=1e-6)
  assert got[3].max() == 0.0 and got[0].argmax() in (0, 1)


def test_done_markers_refuse_changed_inputs(tmp_path):
  assert not plan_lib.check_done(tmp_path, {"a": 1}, "stage 'x'")
  plan_lib.mark_done(tmp_path, {"a": 1}, step=3)
  assert plan_lib.check_done(tmp_path, {"a": 1}, "stage 'x'")
  with pytest.raises(ConfigError, match=r"stage 'x'.*delete"):
    plan_lib.check_done(tmp_path, {"a": 2}, "stage 'x'")


@pytest.mark.slow
def test_pipeline_runs_resumes_after_a_kill_and_reports(tmp_path, wordnet_tokenizer, monkeypatch):
  from pplx_jax.stages import registry
  tok = tmp_path / "tok"
  wordnet_tokenizer.save(tok)
  cfg = _tiny(max_queries=40, max_docs=150, contextual_max_docs=12, batch_size=32)
  fast = ("--config.train.steps=3", "--config.train.eval_every=3", "--config.train.checkpoint_every=3",
          "--config.train.log_every=1", "--config.train.async_checkpointing=False",
          "--config.data.wordnet_limit=1500")
  with cfg.unlocked():
    cfg.tokenizer.path = str(tok)
    for name in cfg.order:
      extra = {"pretrain": ("--config.train.eval_batches=1", "--config.train.global_batch=8"),
               "contextual": ("--config.eval.max_docs=12", "--config.train.global_batch=8")}.get(
                   name, ("--config.eval.max_queries=40", "--config.eval.max_docs=150",
                          "--config.train.global_batch=8"))
      cfg.stages[name].overrides = tuple(cfg.stages[name].overrides) + fast + extra
  work = tmp_path / "run"

  real = registry.run_stage
  calls = []

  def killed_at_contextual(stage_cfg, workdir, **kw):
    calls.append(Path(workdir).name)
    if Path(workdir).name == "contextual":
      raise KeyboardInterrupt("killed during the contextual stage")
    return real(stage_cfg, workdir, **kw)

  monkeypatch.setattr(registry, "run_stage", killed_at_contextual)
  with pytest.raises(KeyboardInterrupt):
    pipeline.run_pipeline(cfg, work)
  assert calls == ["pretrain", "pair", "contextual"]
  pretrain_lines = (work / "pretrain" / "metrics.jsonl").read_text()

  calls.clear()
  monkeypatch.setattr(registry, "run_stage", lambda c, w, **kw: calls.append(Path(w).name) or real(c, w, **kw))
  report = pipeline.run_pipeline(cfg, work)
  assert calls == ["contextual", "triplet", "ablation_causal_last"]  # finished stages are not redone
  assert (work / "pretrain" / "metrics.jsonl").read_text() == pretrain_lines

  text = report.read_text()
  for section in ("## Stages", "## Retrieval", "## Matryoshka", "## Contextual", "## Ablation",
                  "evaluated by others' code", "## Config", "BM25 (baseline)", "MiniLM-L6-v2 (baseline)"):
    assert section in text, section
  for png in ("loss_curves.png", "retrieval.png", "matryoshka.png"):
    assert (work / png).stat().st_size > 5000
  parity = json.loads((work / "eval" / "parity.json").read_text())["results"]
  assert abs(parity["sentence-transformers"] - parity["pplx-jax"]) < 1e-6
  assert abs(parity["mteb"] - parity["pplx-jax"]) < 1e-4
  assert parity["max_abs_embedding_diff"] < 1e-4
  models = {n: json.loads((work / "eval" / f"{n}.json").read_text())["results"] for n in cfg.eval.models}
  for name, res in models.items():
    assert {"float32/16/ndcg@10", "int8/full/ndcg@10", "binary/32/recall@100"} <= set(res["retrieval"]), name
  assert "contextual" in models["merged"] and "contextual" not in models["ablation_causal_last"]
  merge_record = json.loads((work / "merged" / "config.json").read_text())["merge"]
  assert merge_record["t"] == 0.5 and merge_record["method"] == "slerp"
  assert (work / "export" / "hf" / "model.safetensors").is_file() and (work / "export" / "st" / "modules.json").is_file()

  # A third run does nothing but rewrite the report; a changed stage config is refused, naming the stage.
  calls.clear()
  pipeline.run_pipeline(cfg, work)
  assert calls == []
  with cfg.unlocked():
    cfg.stages.pair.overrides = tuple(cfg.stages.pair.overrides) + ("--config.train.global_batch=16",)
  with pytest.raises(ConfigError, match=r"stage 'pair'"):
    pipeline.run_pipeline(cfg, work)


@pytest.mark.parametrize("name", ["qwen3_0_6b", "qwen3_4b"])
def test_pod_pipelines_run_the_same_stages(tmp_path, name):
  """The pod pipelines resolve to the paper-scale stage configs, in the tiny pipeline's graph."""
  tiny = plan_lib.Plan(_tiny(), tmp_path)
  plan = plan_lib.Plan(config_lib.load_config(REPO / f"configs/pipeline/{name}.py"), tmp_path)
  assert plan.order == tiny.order and plan.cfg.merge.to_dict() == tiny.cfg.merge.to_dict()
  size = {"qwen3_0_6b": 1024, "qwen3_4b": 2560}[name]
  assert all(int(c.model.hidden_size) == size for c in plan.stage_cfgs.values())
  assert plan.stage_cfgs["pair"].train.global_batch == 65_536
  assert plan.stage_cfgs["triplet"].objective.kind == "triplet"
  assert plan.stage_cfgs["contextual"].stage == "contextual" and plan.stage_cfgs["pretrain"].stage == "pretrain"
  assert plan.stage_cfgs["pretrain"].data.seq_len == 4096
  ab = plan.stage_cfgs["ablation_causal_last"]
  assert ab.model.attention == "causal" and ab.objective.pooling == "last"
  # Data paths and weights the user must give are named before anything starts.
  with pytest.raises(ConfigError, match=r"(?s)config.tokenizer.path = .*stage 'pair': config.data.sources.0"):
    plan.validate(8)
