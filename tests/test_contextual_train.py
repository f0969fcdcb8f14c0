"""Stage 3a (contextual training) with the shared trainer on the WordNet contextual set: runs sharded, writes the
loss terms and β, evaluates contextual vs non-contextual, and a run stopped and resumed equals an uninterrupted one
(including β, which comes from the data iterator's position)."""

from pathlib import Path

import jax
import numpy as np
import pytest

from pplx_jax import cli
from pplx_jax.convert import load as load_lib
from pplx_jax.core import checkpoint as ckpt
from pplx_jax.core import config as config_lib
from pplx_jax.data.records import read_jsonl
from pplx_jax.objectives.contextual import beta_schedule
from pplx_jax.stages import registry

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def setup(tmp_path_factory, wordnet_tokenizer):
  from pplx_jax.stages.contextual import prepare as ctx_prepare
  root = tmp_path_factory.mktemp("ctx_train")
  wordnet_tokenizer.save(root / "tok")
  assert cli.main(["init", "--config", "configs/model/tiny.py", "--tokenizer", str(root / "tok"),
                   "--workdir", str(root / "start"), "--config.vocab_size=512", "--config.hidden_size=32",
                   "--config.num_layers=2", "--config.num_heads=4", "--config.num_kv_heads=2",
                   "--config.head_dim=8", "--config.mlp_dim=64"]) == 0
  data = ctx_prepare.prepare_wordnet_contextual(root / "data", limit=600)
  return root, data


def small(root, data, **over):
  overrides = [
      f"--config.train.init_from={root / 'start'}", "--config.model.tie_embeddings=True",  # the start is tied
      "--config.model.vocab_size=512", "--config.model.hidden_size=32",
      "--config.model.num_layers=2", "--config.model.num_heads=4", "--config.model.num_kv_heads=2",
      "--config.model.head_dim=8", "--config.model.mlp_dim=64", "--config.data.query_len=12",
      "--config.data.chunk_len=16", "--config.data.max_chunks=6", "--config.train.global_batch=16",
      "--config.train.steps=4", "--config.train.checkpoint_every=2", "--config.train.eval_every=0",
      "--config.train.log_every=1", "--config.optimizer.warmup_steps=1", "--config.train.async_checkpointing=False",
      "--config.eval.max_docs=40",
  ] + [f"--config.{k}={v}" for k, v in over.items()]
  cfg = config_lib.load_config(REPO / "configs/contextual/tiny.py", overrides)
  cfg.data.sources = (str(data),)
  return cfg


def _params(workdir):
  src = ckpt.resolve(workdir)
  cfg, _ = ckpt.read_model_config(src.path)
  return ckpt.params_to_numpy(load_lib.restore_params(src.path, cfg))


def test_trains_writes_metrics_and_evaluates_both_modes(setup, tmp_path):
  assert jax.device_count() == 8
  root, data = setup
  cfg = small(root, data, **{"train.eval_every": 4})
  cfg.mesh.update(dict(data=2, fsdp=4, tensor=1))
  registry.run_stage(cfg, tmp_path / "run")
  rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
  train = [r for r in rows if "loss" in r]
  assert [r["step"] for r in train] == [1, 2, 3, 4]
  for r in train:
    assert np.isfinite(r["loss"]) and {"loss_global", "loss_local", "loss_seq", "loss_batch", "chunk_accuracy",
                                       "doc_accuracy"} <= set(r)
    # β of the step that produced the row (steps 0..3), from the iterator position
    np.testing.assert_allclose(r["beta"], float(beta_schedule(r["step"] - 1, 4)), rtol=1e-6)
  assert train[0]["beta"] == pytest.approx(0.2)
  evals = [r for r in rows if "eval/contextual/float32/full/ndcg@10" in r]
  assert [r["step"] for r in evals] == [0, 4]
  for mode in ("contextual", "non_contextual"):
    for dtype in ("float32", "int8", "binary"):
      assert 0.0 <= evals[-1][f"eval/{mode}/{dtype}/full/ndcg@10"] <= 1.0


def test_stop_and_resume_equals_uninterrupted(setup, tmp_path):
  root, data = setup
  devices = jax.devices()[:2]
  registry.run_stage(small(root, data), tmp_path / "full", devices=devices)
  registry.run_stage(small(root, data), tmp_path / "resumed", stop_after=2, devices=devices)
  registry.run_stage(small(root, data), tmp_path / "resumed", devices=devices)
  a = [r for r in read_jsonl(tmp_path / "full" / "metrics.jsonl") if "loss" in r]
  b = {r["step"]: r for r in read_jsonl(tmp_path / "resumed" / "metrics.jsonl") if "loss" in r}
  assert sorted(b) == [1, 2, 3, 4]
  for r in a:
    np.testing.assert_allclose(b[r["step"]]["loss"], r["loss"], rtol=1e-5)
    assert b[r["step"]]["beta"] == pytest.approx(r["beta"])
  for x, y in zip(jax.tree.leaves(_params(tmp_path / "full")), jax.tree.leaves(_params(tmp_path / "resumed"))):
    np.testing.assert_allclose(x, y, atol=1e-6)


def test_paper_scale_contextual_config_validates():
  from pplx_jax.stages import trainer
  cfg = config_lib.load_config("configs/contextual/qwen3_0_6b.py:v5p-64")
  assert cfg.stage == "contextual" and cfg.objective.alpha == 0.2 and cfg.objective.margin == 0.1
  assert (cfg.objective.beta_start, cfg.objective.beta_end) == (0.2, 0.5) and cfg.objective.use_qq
  trainer.validate(cfg, num_devices=32)
  tiny = config_lib.load_config("configs/contextual/tiny.py")
  assert tiny.train.init_from == "runs/pipeline/pair" and registry.task_factory("contextual").__name__ == \
      "ContextualTask"
