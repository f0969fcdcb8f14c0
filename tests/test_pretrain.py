"""Stage 1 end to end: the trainer with the diffusion task on real WordNet text.

- sharded over 8 CPU devices (two mesh shapes) == one device, after a few steps;
- SIGTERM part-way (preemption: save the current step, exit 75), the same command again, SIGKILL part-way, and
  the same command again == an uninterrupted run, bit for bit;
- an interrupted (temporary) checkpoint directory is never resumed from;
- a non-finite loss stops the run naming the step and the last good checkpoint, and saves nothing after it.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from pplx_jax.convert import load as load_lib
from pplx_jax.core import checkpoint as ckpt
from pplx_jax.core import checksums
from pplx_jax.core import config as config_lib
from pplx_jax.core.errors import PREEMPTED_EXIT_CODE
from pplx_jax.data.records import read_jsonl
from pplx_jax.stages import registry, trainer
from pplx_jax.stages.pretrain.task import PretrainTask

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data_setup(tmp_path_factory, wordnet_tokenizer):
  from pplx_jax.stages.pretrain import prepare as pretrain_prepare
  root = tmp_path_factory.mktemp("pretrain")
  tok = root / "tok"
  wordnet_tokenizer.save(tok)
  ds = pretrain_prepare.prepare_wordnet(root / "data", validation_fraction=0.1, limit=1500)
  return root, tok, ds


def small_config(tok, ds, **over):
  overrides = [
      f"--config.data.tokenizer={tok}", f"--config.data.source={ds}", "--config.data.seq_len=32",
      "--config.model.vocab_size=512", "--config.model.hidden_size=32", "--config.model.num_layers=2",
      "--config.model.num_heads=4", "--config.model.num_kv_heads=2", "--config.model.head_dim=8",
      "--config.model.mlp_dim=64", "--config.objective.ce_chunk_size=16", "--config.train.global_batch=8",
      "--config.train.steps=6", "--config.train.checkpoint_every=2", "--config.train.eval_every=0",
      "--config.train.log_every=1", "--config.optimizer.warmup_steps=2", "--config.train.async_checkpointing=False",
      "--config.objective.random_length_prob=0.25",
  ] + [f"--config.{k}={v}" for k, v in over.items()]
  return config_lib.load_config(REPO / "configs/pretrain/tiny.py", overrides)


def _params(workdir):
  src = ckpt.resolve(workdir)
  cfg, _ = ckpt.read_model_config(src.path)
  return ckpt.params_to_numpy(load_lib.restore_params(src.path, cfg))


def test_sharded_training_equals_single_device(data_setup, tmp_path):
  assert jax.device_count() == 8, "needs 8 CPU devices (XLA_FLAGS set in conftest)"
  _, tok, ds = data_setup
  runs = {}
  for name, mesh, devices in (("one", dict(data=1, fsdp=1, tensor=1), jax.devices()[:1]),
                              ("dp2_fsdp4", dict(data=2, fsdp=4, tensor=1), None),
                              ("fsdp4_tp2", dict(data=1, fsdp=4, tensor=2), None)):
    cfg = small_config(tok, ds, **{"train.steps": 4, "train.checkpoint_every": 4})
    cfg.mesh.update(mesh)
    res = registry.run_stage(cfg, tmp_path / name, devices=devices)
    assert res.step == 4
    runs[name] = (read_jsonl(tmp_path / name / "metrics.jsonl"), _params(tmp_path / name))
  base_metrics, base_params = runs["one"]
  for name in ("dp2_fsdp4", "fsdp4_tp2"):
    metrics, params = runs[name]
    np.testing.assert_allclose([m["loss"] for m in metrics], [m["loss"] for m in base_metrics], rtol=2e-5)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(base_params)):
      np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-4)
  losses = [m["loss"] for m in base_metrics]
  assert all(np.isfinite(losses))


def _train_cmd(workdir, tok, ds, steps):
  args = [sys.executable, "-m", "pplx_jax.cli", "train", "--config", str(REPO / "configs/pretrain/tiny.py"),
          "--workdir", str(workdir),
          f"--config.data.tokenizer={tok}", f"--config.data.source={ds}", "--config.data.seq_len=32",
          "--config.model.vocab_size=512", "--config.model.hidden_size=32", "--config.model.num_layers=2",
          "--config.model.num_heads=4", "--config.model.num_kv_heads=2", "--config.model.head_dim=8",
          "--config.model.mlp_dim=64", "--config.objective.ce_chunk_size=16", "--config.train.global_batch=8",
          f"--config.train.steps={steps}", "--config.train.checkpoint_every=3", "--config.train.eval_every=0",
          "--config.train.log_every=1", "--config.optimizer.warmup_steps=2",
          "--config.objective.random_length_prob=0.25"]
  return args


def _env():
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _wait_for_step(work, proc, at_least, timeout=300):
  """The newest step in metrics.jsonl once it reaches `at_least` (None if the run ended first)."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    rows = read_jsonl(work / "metrics.jsonl") if (work / "metrics.jsonl").exists() else []
    if rows and rows[-1]["step"] >= at_least:
      return rows[-1]["step"]
    if proc.poll() is not None:
      return None
    time.sleep(0.05)
  return None


def test_sigterm_then_sigkill_and_restart_is_bit_identical(data_setup, tmp_path):
  _, tok, ds = data_setup
  steps = 10
  ref = tmp_path / "uninterrupted"
  subprocess.run(_train_cmd(ref, tok, ds, steps), env=_env(), check=True, capture_output=True, timeout=600)

  # Preemption: SIGTERM mid-run saves the step being trained (not a checkpoint_every=3 step) and exits with 75.
  work = tmp_path / "killed"
  proc = subprocess.Popen(_train_cmd(work, tok, ds, steps), env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  seen = _wait_for_step(work, proc, 1)
  assert seen is not None and seen < steps, "the run finished before it could be preempted"
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == PREEMPTED_EXIT_CODE, (proc.returncode, err[-2000:])
  saved = ckpt.manager(work).latest_step()
  assert saved == read_jsonl(work / "metrics.jsonl")[-1]["step"] < steps
  assert f"step {saved}" in err and "SIGTERM" in err
  assert checksums.verify(ckpt.step_dir(work, saved))

  # The same command again, then SIGKILL (no chance to save) past the step-6 checkpoint, and again to the end.
  proc = subprocess.Popen(_train_cmd(work, tok, ds, steps), env=_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  killed_at = _wait_for_step(work, proc, 7)
  if killed_at is not None:
    os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert killed_at is not None and killed_at < steps, "the run finished before it could be killed"
  assert ocp.CheckpointManager(work / "checkpoints").latest_step() < steps
  out = subprocess.run(_train_cmd(work, tok, ds, steps), env=_env(), check=True, capture_output=True, text=True,
                       timeout=600)
  assert "resumed from" in out.stdout
  a, b = _params(ref), _params(work)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert np.array_equal(x, y)


def test_interrupted_checkpoint_is_never_resumed(data_setup, tmp_path):
  _, tok, ds = data_setup
  cfg = small_config(tok, ds, **{"train.steps": 4, "train.checkpoint_every": 2})
  registry.run_stage(cfg, tmp_path / "w", devices=jax.devices()[:1])
  ckdir = tmp_path / "w" / "checkpoints"
  # What an interrupted save leaves behind: a temporary directory orbax has not renamed yet.
  partial = ckdir / "6.orbax-checkpoint-tmp-1234567890"
  partial.mkdir()
  (partial / "params").mkdir()
  assert ckpt.manager(tmp_path / "w").latest_step() == 4
  assert ckpt.resolve(tmp_path / "w").path.name == "4"
  cfg = small_config(tok, ds, **{"train.steps": 6, "train.checkpoint_every": 2})
  res = registry.run_stage(cfg, tmp_path / "w", devices=jax.devices()[:1])
  assert res.step == 6  # resumed from 4, not from the partial 6


class _PoisonedTask(PretrainTask):
  """Injects a NaN into the loss from the 4th batch on (data-dependent, so the jitted step sees it)."""

  def train_data(self, per_process_batch, shard_index, shard_count):
    inner = super().train_data(per_process_batch, shard_index, shard_count)

    class It:
      n = 0

      def __next__(self):
        b = dict(next(inner))
        It.n += 1
        b["poison"] = np.full((per_process_batch,), 1.0 if It.n >= 4 else 0.0, np.float32)
        return b

      def get_state(self):
        return inner.get_state()

      def set_state(self, s):
        inner.set_state(s)

    return It()

  def loss(self, model, batch, rng):
    batch = dict(batch)
    poison = batch.pop("poison")
    loss, metrics = super().loss(model, batch, rng)
    return loss + jnp.where(poison.sum() > 0, jnp.nan, 0.0), metrics


def test_non_finite_loss_stops_naming_step_and_checkpoint(data_setup, tmp_path):
  _, tok, ds = data_setup
  cfg = small_config(tok, ds, **{"train.steps": 8, "train.checkpoint_every": 2})
  with pytest.raises(trainer.NonFiniteLossError) as e:
    trainer.train(cfg, tmp_path / "w", _PoisonedTask, devices=jax.devices()[:1])
  msg = str(e.value)
  assert "at step 4" in msg and str(tmp_path / "w" / "checkpoints" / "2") in msg
  assert ckpt.manager(tmp_path / "w").all_steps() == [2]


def test_config_errors_fail_before_compiling(data_setup, tmp_path):
  _, tok, ds = data_setup
  cfg = small_config(tok, ds, **{"train.global_batch": 6})
  cfg.mesh.update(dict(data=1, fsdp=4, tensor=2))
  with pytest.raises(ValueError, match=r"global batch 6 is not divisible by the batch mesh axes"):
    registry.run_stage(cfg, tmp_path / "w")
  cfg = small_config(tok, ds, **{"model.num_kv_heads": 1})
  cfg.mesh.update(dict(data=1, fsdp=4, tensor=2))
  with pytest.raises(ValueError, match=r"model.num_kv_heads=1 is not divisible by mesh axes \('tensor',\) of size 2"):
    registry.run_stage(cfg, tmp_path / "w2")
  assert not (tmp_path / "w2" / "checkpoints").exists()


def test_starts_from_a_hugging_face_checkpoint(data_setup, tmp_path):
  """train.init_from = an HF Qwen3 folder: the run starts from exactly those weights (lr 0 keeps them)."""
  import torch
  from transformers import Qwen3Config, Qwen3ForCausalLM

  from pplx_jax.convert import hf
  _, tok, ds = data_setup
  torch.manual_seed(0)
  hc = Qwen3Config(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=8, tie_word_embeddings=True, rope_theta=1_000_000.0)
  Qwen3ForCausalLM(hc).save_pretrained(tmp_path / "hf")
  cfg = small_config(tok, ds, **{"train.steps": 1, "train.init_from": str(tmp_path / "hf"), "optimizer.lr": 0.0,
                                 "model.rope_theta": 1_000_000.0, "model.tie_embeddings": True})
  registry.run_stage(cfg, tmp_path / "w", devices=jax.devices()[:1])
  tensors, _ = hf.read_safetensors(tmp_path / "hf")
  mcfg, _ = ckpt.read_model_config(ckpt.resolve(tmp_path / "w").path)
  expected = hf.params_from_hf(tensors, mcfg)
  got = _params(tmp_path / "w")
  for (pa, a), (pb, b) in zip(jax.tree_util.tree_flatten_with_path(got)[0],
                              jax.tree_util.tree_flatten_with_path(expected)[0]):
    assert pa == pb and np.array_equal(a, b), pa
  # A config whose architecture differs from the checkpoint is refused, naming the field.
  bad = small_config(tok, ds, **{"train.init_from": str(tmp_path / "hf"), "model.mlp_dim": 96,
                                 "model.rope_theta": 1_000_000.0, "model.tie_embeddings": True})
  with pytest.raises(ValueError, match=r"mlp_dim: config 96 vs checkpoint 64"):
    registry.run_stage(bad, tmp_path / "w2", devices=jax.devices()[:1])
