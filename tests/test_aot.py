"""`pplx-jax aot`: the real train step compiled for TPU topologies on this CPU (libtpu from PyPI, installed by
setup.sh: a missing libtpu fails these tests, it never skips them). Small topologies and the tiny configs keep each
compile to ~20 s on 2 cores."""

import json
import re

import pytest

from pplx_jax import cli
from pplx_jax.stages import aot

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
TINY_PRETRAIN = str(ROOT / "configs/pretrain/tiny.py")
TINY_PAIRS = str(ROOT / "configs/contrastive/tiny.py")


def _run(capsys, *argv):
  code = cli.main(["aot", *argv])
  return code, capsys.readouterr().out


def test_libtpu_is_installed():
  import libtpu  # noqa: F401  (setup.sh installs the tpu-aot extra; CI must exercise the compile checks)


def test_pretrain_step_compiles_with_splash_and_reports_memory(capsys, tmp_path):
  out_json = tmp_path / "r.json"
  # bf16 + auto attention: what a TPU run of this config would compile (splash, resolved for the TPU target)
  code, out = _run(capsys, "--config", TINY_PRETRAIN, "--topology", "v5e:2x2", "--json", str(out_json),
                   "--config.model.compute_dtype=bfloat16", "--config.model.remat=full")
  assert code == 0, out
  assert "attention splash" in out and "remat full" in out and "fits with" in out
  r = json.loads(out_json.read_text())
  assert r["chips"] == 4 and r["mesh"]["fsdp"] == 4 and r["capacity_gib"] == 16.0 and r["fits"]
  for k in ("argument_gib", "output_gib", "temp_gib", "code_gib"):
    assert r[k] > 0, k
  # donated params and optimizer state alias the outputs: counted once
  assert 0 < r["alias_gib"] <= r["output_gib"]
  total = r["argument_gib"] + r["output_gib"] - r["alias_gib"] + r["temp_gib"] + r["code_gib"]
  assert r["total_gib"] == pytest.approx(total)
  # tiny model: 16 x 128 tokens, 1.3 GFLOP per chip analytically; XLA's count is the same order (loops once)
  assert r["model_flops_per_chip"] == pytest.approx(1.309e9, rel=0.01)
  assert 0.1 < r["compiled_flops_per_chip"] / r["model_flops_per_chip"] < 10
  assert r["tokens_per_step"] == 16 * 128


def test_gradcache_contrastive_step_compiles(capsys):
  code, out = _run(capsys, "--config", TINY_PAIRS, "--topology", "v5p:2x2x1", "--config.objective.gradcache_chunks=4",
                   "--config.data.query_len=128", "--config.data.doc_len=128")
  assert code == 0, out
  assert "contrastive" in out or "tiny.py" in out
  assert re.search(r"v5p:2x2x1 \(4 chips\)", out)
  assert "of 95 GiB HBM" in out


def test_absurd_batch_does_not_fit_and_exits_nonzero(capsys):
  # 65,536 rows x 128 tokens on 4 v5e chips: the float32 logits of one CE chunk alone are ~32 GiB per chip
  code, out = _run(capsys, "--config", TINY_PRETRAIN, "--topology", "v5e:2x2", "--config.train.global_batch=65536")
  assert code == 3, out
  m = re.search(r"DOES NOT FIT: needs ([\d.]+) GiB > 16 GiB per chip", out)
  assert m and float(m.group(1)) > 16, out


def test_budget_flag_turns_a_fit_into_a_failure(capsys):
  code, out = _run(capsys, "--config", TINY_PRETRAIN, "--topology", "v5e:2x2", "--budget-gib", "0.001")
  assert code == 3 and "DOES NOT FIT" in out and "> 0 GiB" in out


def test_remat_sweep_chooses_the_fastest_policy_that_fits(capsys, tmp_path):
  out_json = tmp_path / "sweep.json"
  code, out = _run(capsys, "--config", TINY_PRETRAIN, "--topology", "v5e:2x2", "--remat-sweep", "none,full",
                   "--json", str(out_json))
  assert code == 0, out
  r = json.loads(out_json.read_text())
  by = {x["remat"]: x for x in r["reports"]}
  assert set(by) == {"none", "full"} and all(x["fits"] for x in by.values())
  assert by["none"]["temp_gib"] != by["full"]["temp_gib"]  # each compile took its own policy
  timed = {k: v["xla_seconds"] for k, v in by.items() if v["xla_seconds"]}
  assert r["choice"] == (min(timed, key=timed.get) if timed else min(by, key=lambda k: by[k]["total_gib"]))
  assert f"choice: remat={r['choice']}" in out


def test_topology_names():
  assert aot.resolve_topology("v5p-128") == ("v5p:4x4x4", "v5p")  # v5p names count TensorCores: 64 chips
  assert aot.resolve_topology("v6e-256") == ("v6e:16x16", "v6e")
  devices, topo, gen = aot.topology_devices("v6e-64")
  assert (len(devices), topo, gen) == (64, "v6e:8x8", "v6e")
  with pytest.raises(aot.AotError, match="--topology 'v7x-9'"):
    aot.resolve_topology("v7x-9")


def test_config_errors_name_the_key(capsys):
  code = cli.main(["aot", "--config", TINY_PRETRAIN, "--topology", "v5e:2x2", "--config.train.global_batch=6"])
  err = capsys.readouterr().err
  assert code == 2 and "global batch 6" in err and "fsdp" in err


def test_parse_oom_message():
  msg = ("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory space hbm. "
         "Used 183.50G of 95.74G hbm. Exceeded hbm capacity by 87.76G.")
  need, cap = aot.parse_oom(msg)
  assert need == pytest.approx(183.5) and cap == pytest.approx(95.74)
  need, cap = aot.parse_oom("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
                            "temporaries (122.16G) exceeds available HBM (15.75G).")
  assert need == pytest.approx(122.16) and cap == pytest.approx(15.75)
  assert aot.parse_oom("some other failure") is None


def test_batch_shapes_match_what_the_pipelines_yield():
  """The abstract batch the compile check lowers with is the batch training feeds (keys, shapes, dtypes)."""
  from pplx_jax.core import config as config_lib
  from pplx_jax.data.loader import PhasedPipeline
  from pplx_jax.stages.contrastive import data as pair_data
  from pplx_jax.stages.contrastive.task import ContrastiveTask
  from pplx_jax.stages.pretrain import data as pretrain_data
  from pplx_jax.stages.pretrain.task import PretrainTask

  layout = lambda batch: {k: (tuple(v.shape), str(v.dtype)) for k, v in batch.items()}
  cfg = config_lib.load_config(TINY_PRETRAIN)
  task = PretrainTask.for_compile(cfg, config_lib.model_config(cfg))
  assert layout(pretrain_data._Collate(4, int(cfg.data.seq_len), 0)([])) == task.batch_shapes(4)

  class Tok:  # the collate step only needs ids and a pad id; texts and vocabulary do not change the layout
    pad_id = 0

    @staticmethod
    def encode_batch(texts):
      return [[1, 2, 3]] * len(texts)

  recs = [{"query": "q", "positive": "p", "negatives": ["a", "b", "c"]}] * 4
  for path in (TINY_PAIRS, str(ROOT / "configs/contrastive/tiny_triplet.py")):
    cfg = config_lib.load_config(path)
    task = ContrastiveTask.for_compile(cfg, config_lib.model_config(cfg))
    d = cfg.data
    collate = pair_data._Collate([recs], Tok(), task.kind, int(d.query_len), int(d.doc_len), int(d.doc_len),
                                 int(d.num_negatives))

    class Inner:
      source_index = [0]

      def __next__(self):
        return collate([(0, i) for i in range(4)])

    assert layout(next(PhasedPipeline(lambda phase: Inner(), [10]))) == task.batch_shapes(4), path


def test_remat_sweep_skips_policies_that_save_more_than_one_that_does_not_fit(capsys, tmp_path):
  out_json = tmp_path / "sweep.json"
  code, out = _run(capsys, "--config", TINY_PRETRAIN, "--topology", "v5e:2x2", "--budget-gib", "0.001",
                   "--remat-sweep", "full,dots,none", "--json", str(out_json))
  assert code == 3, out
  r = json.loads(out_json.read_text())
  by = {x["remat"]: x for x in r["reports"]}
  assert r["choice"] is None and not any(x["fits"] for x in by.values())
  assert by["full"]["compile_s"] > 0 and by["full"]["temp_gib"] is not None  # compiled, and too big
  for policy in ("dots", "none"):
    assert by[policy]["message"].startswith("not compiled: saves more than remat=full"), by[policy]
    assert by[policy]["temp_gib"] is None
  assert "choice: none fits" in out
