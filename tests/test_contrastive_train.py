"""Stages 2 / 3b end to end with the shared trainer on real WordNet pairs and triplets.

- sharded over 8 devices == one device; GradCache == the plain step (same losses and parameters);
- the curriculum switches mixture at the configured steps and resumes in the right phase;
- the triplet stage runs with hard negatives; the ablation switch loads.
"""

from pathlib import Path

import jax
import numpy as np
import pytest

from pplx_jax import cli
from pplx_jax.convert import load as load_lib
from pplx_jax.core import checkpoint as ckpt
from pplx_jax.core import config as config_lib
from pplx_jax.data.records import read_jsonl
from pplx_jax.stages import registry

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def setup(tmp_path_factory, wordnet_tokenizer):
  from pplx_jax.stages.contrastive import prepare as pair_prepare
  from pplx_jax.stages.contrastive.prepare import prepare_wordnet_triplets
  root = tmp_path_factory.mktemp("contrastive")
  wordnet_tokenizer.save(root / "tok")
  assert cli.main(["init", "--config", "configs/model/tiny.py", "--tokenizer", str(root / "tok"),
                   "--workdir", str(root / "start"), "--config.vocab_size=512", "--config.hidden_size=32",
                   "--config.num_layers=2", "--config.num_heads=4", "--config.num_kv_heads=2",
                   "--config.head_dim=8", "--config.mlp_dim=64"]) == 0
  lemma = pair_prepare.prepare_wordnet_pairs(root / "data", kinds=("lemma",), limit=600)
  example = pair_prepare.prepare_wordnet_pairs(root / "data2", kinds=("example",), limit=600)
  trip = prepare_wordnet_triplets(root / "data3", limit=400)
  return root, lemma, example, trip


def small(root, sources, config="configs/contrastive/tiny.py", **over):
  overrides = [
      f"--config.train.init_from={root / 'start'}", "--config.model.tie_embeddings=True",  # the start is tied
      "--config.model.vocab_size=512", "--config.model.hidden_size=32",
      "--config.model.num_layers=2", "--config.model.num_heads=4", "--config.model.num_kv_heads=2",
      "--config.model.head_dim=8", "--config.model.mlp_dim=64", "--config.data.query_len=8",
      "--config.data.doc_len=16", "--config.train.global_batch=16", "--config.train.steps=4",
      "--config.train.checkpoint_every=4", "--config.train.eval_every=0", "--config.train.log_every=1",
      "--config.optimizer.warmup_steps=1", "--config.train.async_checkpointing=False",
      "--config.objective.matryoshka_dims=(16, -1)", "--config.eval.dims=(16, -1)", "--config.eval.max_queries=50",
      "--config.objective.margin=0.1", "--config.objective.use_qq=True",  # the paper's loss, off in tiny.py
  ] + [f"--config.{k}={v}" for k, v in over.items()]
  cfg = config_lib.load_config(REPO / config, overrides)
  cfg.data.sources = tuple(str(s) for s in sources)
  return cfg


def _params(workdir):
  src = ckpt.resolve(workdir)
  cfg, _ = ckpt.read_model_config(src.path)
  return ckpt.params_to_numpy(load_lib.restore_params(src.path, cfg))


def _run(cfg, workdir, devices=None):
  registry.run_stage(cfg, workdir, devices=devices)
  return [m["loss"] for m in read_jsonl(workdir / "metrics.jsonl") if "loss" in m], _params(workdir)


def test_sharded_and_gradcache_equal_single_device(setup, tmp_path):
  assert jax.device_count() == 8, "needs 8 CPU devices (XLA_FLAGS set in conftest)"
  root, lemma, _, _ = setup
  one = _run(small(root, [lemma]), tmp_path / "one", jax.devices()[:1])
  cfg = small(root, [lemma])
  cfg.mesh.update(dict(data=2, fsdp=4, tensor=1))
  eight = _run(cfg, tmp_path / "eight")
  gc = _run(small(root, [lemma], **{"objective.gradcache_chunks": 2}), tmp_path / "gc8")
  for name, (losses, params) in (("8 devices", eight), ("gradcache on 8 devices", gc)):
    np.testing.assert_allclose(losses, one[0], rtol=5e-5, err_msg=name)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(one[1])):
      np.testing.assert_allclose(a, b, atol=5e-5, rtol=5e-4, err_msg=name)
  assert all(np.isfinite(one[0]))


def test_curriculum_phases_and_resume(setup, tmp_path):
  root, lemma, example, _ = setup
  phases = "({'until_step': 2, 'weights': [1.0, 0.0]}, {'until_step': 4, 'weights': [0.0, 1.0]})"
  cfg = small(root, [lemma, example], **{"data.phases": phases, "train.steps": 4, "train.checkpoint_every": 2})
  from pplx_jax.stages.contrastive.task import ContrastiveTask
  task = ContrastiveTask(cfg, config_lib.model_config(cfg), root / "tok")
  it = task.train_data(16, 0, 1)
  batches = [next(it) for _ in range(4)]
  assert [int(b["phase"][0]) for b in batches] == [0, 0, 1, 1]
  assert all((b["dataset"] == 0).all() for b in batches[:2])  # only the lemma source in phase 0
  assert all((b["dataset"] == 1).all() for b in batches[2:])  # only the example source in phase 1
  # Resume from a state saved in phase 1 continues phase 1 exactly.
  it2 = task.train_data(16, 0, 1)
  [next(it2) for _ in range(3)]
  state = it2.get_state()
  it3 = task.train_data(16, 0, 1)
  it3.set_state(state)
  a, b = next(it2), next(it3)
  assert int(b["phase"][0]) == 1 and all(np.array_equal(a[k], b[k]) for k in a)


def test_triplet_stage_with_hard_negatives_and_eval(setup, tmp_path):
  root, _, _, trip = setup
  cfg = small(root, [trip], config="configs/contrastive/tiny_triplet.py",
              **{"data.num_negatives": 2, "train.eval_every": 4, "train.steps": 4})
  losses, _ = _run(cfg, tmp_path / "trip", jax.devices()[:1])
  assert len(losses) == 4 and all(np.isfinite(losses))
  rows = read_jsonl(tmp_path / "trip" / "metrics.jsonl")
  evals = [r for r in rows if "eval/float32/full/ndcg@10" in r]
  assert [r["step"] for r in evals] == [0, 4]
  for key in ("eval/int8/full/ndcg@10", "eval/binary/full/ndcg@10", "eval/float32/16/ndcg@10"):
    assert key in evals[-1] and 0.0 <= evals[-1][key] <= 1.0


def test_ablation_switch_sets_causal_and_last_token():
  cfg = config_lib.load_config("configs/contrastive/tiny.py:causal_last")
  assert cfg.model.attention == "causal" and cfg.objective.pooling == "last"
  cfg = config_lib.load_config("configs/contrastive/tiny.py")
  assert cfg.model.attention == "bidirectional" and cfg.objective.pooling == "mean"


def test_paper_scale_contrastive_config_validates():
  from pplx_jax.stages import trainer
  cfg = config_lib.load_config("configs/contrastive/qwen3_0_6b.py:v5p-64")
  assert cfg.train.global_batch == 65_536 and cfg.objective.gradcache_chunks == 64
  trainer.validate(cfg, num_devices=32)
