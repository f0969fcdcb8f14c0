"""MFU: the CPU peak is measured in the model's compute dtype, never falls within a process, and a step that beats
it makes the trainer measure again instead of logging an MFU above 100%."""

import types

import jax.numpy as jnp
import pytest

from pplx_jax.data.records import read_jsonl
from pplx_jax.stages import flops, registry


def test_measured_peak_is_positive_and_never_falls(monkeypatch):
  monkeypatch.setattr(flops, "_PEAKS", {})
  first = flops.measure_matmul_peak(n=128, repeats=2)
  assert first > 0
  clock = iter(range(0, 100_000, 1000))  # every matmul now takes "1000 s": a contended measurement
  monkeypatch.setattr(flops, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
  assert flops.measure_matmul_peak(n=128, repeats=2) == first  # the slow, contended measurement does not win
  assert flops.measure_matmul_peak(n=128, dtype=jnp.bfloat16, repeats=1) < first  # its own entry per dtype


@pytest.fixture()
def tiny_pretrain(tmp_path, wordnet_tokenizer):
  from tests.test_pretrain import small_config
  from pplx_jax.stages.pretrain import prepare as pretrain_prepare
  tok = tmp_path / "tok"
  wordnet_tokenizer.save(tok)
  ds = pretrain_prepare.prepare_wordnet(tmp_path / "data", validation_fraction=0.1, limit=300)
  return small_config(tok, ds, **{"train.steps": 4, "train.checkpoint_every": 4})


def test_a_step_faster_than_the_measured_peak_remeasures_it(tiny_pretrain, tmp_path, monkeypatch):
  import jax
  calls = []

  def fake_peak(n=1024, dtype=jnp.float32, repeats=10):
    calls.append(jnp.dtype(dtype).name)
    return 1.0 if len(calls) == 1 else 1e18  # the first measurement ran while the cores were busy elsewhere

  monkeypatch.setattr(flops, "device_peak_flops", lambda device=None: None)
  monkeypatch.setattr(flops, "measure_matmul_peak", fake_peak)
  registry.run_stage(tiny_pretrain, tmp_path / "run", devices=jax.devices()[:1])
  steps = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "mfu" in r]
  assert steps and all(0 < r["mfu"] <= 1.0 for r in steps)
  assert calls[0] == "float32" and len(calls) == 2  # measured in the model's dtype; again once, then no more
  assert all(r["peak_flops"] == 1e18 for r in steps)
