"""Multi-host: real `jax.distributed` over loopback (2 processes x 4 CPU devices) == one process with 8 devices;
checkpoints restore on another mesh and process count; a lost coordinator fails fast; the launchers' dry runs.

The multi-process runs go through launch/local.py exactly as a user would start them.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from pplx_jax import cli
from pplx_jax.cli import launch
from pplx_jax.convert import load as load_lib
from pplx_jax.core import checkpoint as ckpt
from pplx_jax.core import config as config_lib
from pplx_jax.core.errors import PREEMPTED_EXIT_CODE
from pplx_jax.core import distributed as dist
from pplx_jax.data.records import read_jsonl
from pplx_jax.stages import registry

REPO = Path(__file__).resolve().parent.parent
TINY_MODEL = ["--config.model.vocab_size=512", "--config.model.hidden_size=32", "--config.model.num_layers=2",
              "--config.model.num_heads=4", "--config.model.num_kv_heads=2", "--config.model.head_dim=8",
              "--config.model.mlp_dim=64", "--config.model.tie_embeddings=True"]  # as the start `init` makes
COMMON = ["--config.train.global_batch=8", "--config.train.log_every=1",
          "--config.optimizer.warmup_steps=1", "--config.train.async_checkpointing=False"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, wordnet_tokenizer):
  from pplx_jax.stages.contrastive import prepare as pair_prepare
  from pplx_jax.stages.pretrain import prepare as pretrain_prepare
  root = tmp_path_factory.mktemp("multihost")
  wordnet_tokenizer.save(root / "tok")
  text = pretrain_prepare.prepare_wordnet(root / "data", validation_fraction=0.1, limit=400)
  lemma = pair_prepare.prepare_wordnet_pairs(root / "pairs", kinds=("lemma",), limit=300)
  assert cli.main(["init", "--config", "configs/model/tiny.py", "--tokenizer", str(root / "tok"),
                   "--workdir", str(root / "start")] + [a.replace("model.", "") for a in TINY_MODEL]) == 0
  return root, text, lemma


def pretrain_args(root, text, steps=4, checkpoint_every=2):
  return ["--config", str(REPO / "configs/pretrain/tiny.py"), f"--config.data.tokenizer={root / 'tok'}",
          f"--config.data.source={text}", "--config.data.seq_len=32", "--config.objective.ce_chunk_size=16",
          "--config.objective.random_length_prob=0.25", f"--config.train.steps={steps}",
          f"--config.train.checkpoint_every={checkpoint_every}", f"--config.train.eval_every={steps}",
          "--config.train.eval_batch=8", "--config.train.eval_batches=2"] + TINY_MODEL + COMMON


def contrastive_args(root, lemma, steps=3):
  return ["--config", str(REPO / "configs/contrastive/tiny.py"), f"--config.train.init_from={root / 'start'}",
          f"--config.data.sources=('{lemma}',)", "--config.data.query_len=8", "--config.data.doc_len=16",
          "--config.objective.matryoshka_dims=(16, -1)", "--config.eval.dims=(16, -1)", f"--config.train.steps={steps}",
          f"--config.train.checkpoint_every={steps}", f"--config.train.eval_every={steps}",
          # the paper's full pair loss (the tiny config turns these off for quality at 64 dims)
          "--config.objective.margin=0.1", "--config.objective.use_qq=True",
          "--config.eval.max_queries=40", "--config.eval.max_docs=100", "--config.eval.dtypes=('float32',)"
          ] + TINY_MODEL + COMMON


def run_in_process(args, workdir, devices=None):
  """The single-process reference: this test process, 8 (or `devices`) CPU devices."""
  cfg = config_lib.load_config(args[1], [a for a in args[2:] if a.startswith("--config.")])
  registry.run_stage(cfg, workdir, devices=devices)
  return losses(workdir)


def run_two_processes(args, workdir, log_dir, timeout=240):
  cmd = [sys.executable, str(REPO / "launch/local.py"), "--processes", "2", "--devices", "4", "--init-timeout", "60",
         "--log-dir", str(log_dir), "--", *args, "--workdir", str(workdir)]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
  logs = [p.read_text() if p.exists() else "" for p in (log_dir / f"process_{i}.log" for i in range(2))]
  tails = "\n".join(f"--- process {i}\n{text[-3000:]}" for i, text in enumerate(logs))
  assert out.returncode == 0, f"launcher failed ({out.returncode}):\n{out.stderr[-2000:]}\n{tails}"
  return losses(workdir), logs


def losses(workdir):
  return [m["loss"] for m in read_jsonl(Path(workdir) / "metrics.jsonl") if "loss" in m]


def evals(workdir):
  """{step: {eval metric: value}} (written at step 0 and at the end)."""
  out = {}
  for m in read_jsonl(Path(workdir) / "metrics.jsonl"):
    ev = {k: v for k, v in m.items() if k.startswith("eval/")}
    if ev:
      out.setdefault(m["step"], {}).update(ev)
  return out


def assert_same_evals(a, b):
  assert a.keys() == b.keys() and len(a) == 2, (a.keys(), b.keys())
  for step in a:
    assert a[step].keys() == b[step].keys()
    np.testing.assert_allclose([b[step][k] for k in sorted(b[step])], [a[step][k] for k in sorted(a[step])],
                               rtol=1e-4, atol=1e-6, err_msg=f"evaluation at step {step}")


@pytest.mark.slow
def test_pretrain_two_processes_equal_one_and_checkpoints_reshard(setup, tmp_path):
  assert jax.device_count() == 8, "needs 8 CPU devices (XLA_FLAGS set in conftest)"
  root, text, _ = setup
  args = pretrain_args(root, text)
  one = run_in_process(args, tmp_path / "one")
  two, logs = run_two_processes(args, tmp_path / "two", tmp_path / "logs")
  assert len(one) == 4 and all(np.isfinite(one))
  # Written by process 0 only: one row per step (a second writer would append a second set).
  assert [m["step"] for m in read_jsonl(tmp_path / "two" / "metrics.jsonl") if "loss" in m] == [1, 2, 3, 4]
  assert_same_evals(evals(tmp_path / "one"), evals(tmp_path / "two"))  # every process evaluates all held-out rows
  assert "process 1 of 2" in logs[1] and "[pretrain] step 4" in logs[0] and "[pretrain] step" not in logs[1]
  assert len(list((tmp_path / "two" / "tensorboard").glob("events.out.tfevents.*"))) == 1
  np.testing.assert_allclose(two, one, rtol=1e-5)
  # One checkpoint per step, complete (no leftover temporary directories from a second writer).
  assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["2", "4"]

  # The 8-device (2 x 4) run's step-2 checkpoint resumes in 1 process on a 4-device mesh: parameters, optimizer
  # state and the data position reshard, and steps 3-4 match the uninterrupted 8-device runs.
  work = tmp_path / "resumed"
  shutil.copytree(tmp_path / "two" / "checkpoints" / "2", work / "checkpoints" / "2")
  shutil.copytree(tmp_path / "two" / "tokenizer", work / "tokenizer")
  resumed = run_in_process(args, work, devices=jax.devices()[:4])
  np.testing.assert_allclose(resumed, one[2:], rtol=1e-5)


@pytest.mark.slow
def test_contrastive_two_processes_equal_one(setup, tmp_path):
  root, _, lemma = setup
  args = contrastive_args(root, lemma)
  one = run_in_process(args, tmp_path / "one")
  two, _ = run_two_processes(args, tmp_path / "two", tmp_path / "logs")
  assert len(one) == 3 and all(np.isfinite(one))
  np.testing.assert_allclose(two, one, rtol=1e-5)
  assert_same_evals(evals(tmp_path / "one"), evals(tmp_path / "two"))  # retrieval embeddings gathered from both


def test_global_batches_do_not_depend_on_the_process_count(setup, wordnet_tokenizer):
  """The data each process reads, put together in process order, is the one-process batch (pairs and packing)."""
  from pplx_jax.data import prepared
  from pplx_jax.stages.contrastive.data import PairPipeline
  from pplx_jax.stages.pretrain.data import PackedStreams
  _, text, lemma = setup
  src = prepared.load_split(text, "train")
  pairs_src = prepared.load_split(lemma, "train")
  for make in (lambda b, i, n: PackedStreams(src, wordnet_tokenizer, 32, 8, 4, seed=3, shard_index=i, shard_count=n),
               lambda b, i, n: PairPipeline(pairs_src, wordnet_tokenizer, b, query_len=8, doc_len=16, seed=3,
                                            shard_index=i, shard_count=n)):
    one = make(8, 0, 1)
    parts = [make(4, i, 2) for i in range(2)]
    for _ in range(3):
      ref = next(one)
      got = [next(p) for p in parts]
      for k in ref:
        assert np.array_equal(np.concatenate([g[k] for g in got]), ref[k]), k
      assert not np.array_equal(got[0][next(iter(ref))], got[1][next(iter(ref))])  # the halves differ
  state = parts[1].get_state()  # a position saved by 2 processes restores in 1 (pairs: the global position)
  one = PairPipeline(pairs_src, wordnet_tokenizer, 8, query_len=8, doc_len=16, seed=3, shard_index=0, shard_count=1)
  one.set_state(json.loads(json.dumps(state)))
  ref = PairPipeline(pairs_src, wordnet_tokenizer, 8, query_len=8, doc_len=16, seed=3, shard_index=0, shard_count=1)
  for _ in range(4):
    expected = next(ref)
  assert np.array_equal(next(one)["q_ids"], expected["q_ids"])


def test_packing_streams_must_split_over_processes(setup, wordnet_tokenizer):
  from pplx_jax.data import prepared
  from pplx_jax.stages.pretrain.data import PackedStreams
  src = prepared.load_split(setup[1], "train")
  with pytest.raises(ValueError, match=r"4 packing streams \(data.packing_streams\) cannot be split evenly over 3"):
    PackedStreams(src, wordnet_tokenizer, 32, 12, 4, shard_index=0, shard_count=3)
  with pytest.raises(ValueError, match=r"global batch 12 is not divisible by 8 packing streams"):
    PackedStreams(src, wordnet_tokenizer, 32, 12, 8)


def test_unreachable_coordinator_fails_fast_naming_the_address(tmp_path):
  port = launch.free_port()  # nobody listens there
  cmd = [sys.executable, "-m", "pplx_jax.cli", "train", "--config", str(REPO / "configs/pretrain/tiny.py"),
         "--workdir", str(tmp_path / "w"), "--coordinator-address", f"127.0.0.1:{port}", "--num-processes", "2",
         "--process-id", "1", "--init-timeout", "3"]
  t0 = time.monotonic()
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
  elapsed = time.monotonic() - t0
  assert out.returncode == 2, out.stderr[-2000:]
  assert f"cannot reach the coordinator at 127.0.0.1:{port} within 3 s" in out.stderr
  assert elapsed < 30, elapsed
  assert not (tmp_path / "w").exists()


def test_distributed_settings_and_detection():
  assert dist.settings(env={}) == dist.Settings()
  s = dist.settings(env={"PPLX_COORDINATOR": "10.0.0.2:1234", "PPLX_NUM_PROCESSES": "4", "PPLX_PROCESS_ID": "3"})
  assert (s.coordinator_address, s.num_processes, s.process_id) == ("10.0.0.2:1234", 4, 3)
  assert dist.settings(process_id=0, env={"PPLX_COORDINATOR": "h:1", "PPLX_NUM_PROCESSES": "2",
                                          "PPLX_PROCESS_ID": "1"}).process_id == 0  # flags win
  with pytest.raises(dist.DistributedError, match=r"missing: --num-processes / PPLX_NUM_PROCESSES"):
    dist.settings(env={"PPLX_COORDINATOR": "h:1", "PPLX_PROCESS_ID": "0"})
  with pytest.raises(dist.DistributedError, match=r"'h1234' is not HOST:PORT"):
    dist.settings("h1234", 2, 0, env={})
  with pytest.raises(dist.DistributedError, match=r"process id 2 is not in \[0, 2\)"):
    dist.settings("h:1", 2, 2, env={})
  with pytest.raises(dist.DistributedError, match=r"PPLX_NUM_PROCESSES='two' is not a valid integer"):
    dist.settings(env={"PPLX_NUM_PROCESSES": "two"})
  slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "2", "SLURM_PROCID": "0",
           "SLURM_LOCALID": "0"}
  assert dist.detect_cluster(slurm) == "slurm"
  assert dist.detect_cluster(dict(slurm, SLURM_NTASKS="1"), ) != "slurm"  # a one-task job is one process
  assert dist.detect_cluster({"TPU_WORKER_HOSTNAMES": "a,b", "TPU_SKIP_MDS_QUERY": "1"}) == "gke-tpu"
  assert dist.detect_cluster({"TPU_SKIP_MDS_QUERY": "1"}) is None  # this CPU machine: nothing to initialise


def _dry(main, argv, capsys):
  assert main(argv) == 0
  return capsys.readouterr().out.strip().splitlines()


def test_local_launcher_dry_run(capsys):
  lines = _dry(launch.main_local, ["--processes", "3", "--devices", "2", "--port", "4321", "--dry-run", "--",
                                   "--config", "c.py", "--workdir", "w"], capsys)
  assert len(lines) == 4 and lines[-1] == "wait"
  for i, line in enumerate(lines[:3]):
    assert line.startswith("JAX_PLATFORMS=cpu ") and line.endswith(" &")
    assert (f"-m pplx_jax.cli train --config c.py --workdir w --coordinator-address 127.0.0.1:4321 "
            f"--num-processes 3 --process-id {i} --local-devices 2") in line
  with pytest.raises(SystemExit, match="needs the `pplx-jax train` arguments after `--`"):
    launch.main_local(["--dry-run"])


def test_local_launcher_stops_all_when_one_fails(tmp_path):
  """A process that fails takes the others down (instead of leaving them waiting on it forever)."""
  slow = [sys.executable, "-c", "import time; time.sleep(60)"]
  bad = [sys.executable, "-c", "import sys; sys.exit(3)"]
  t0 = time.monotonic()
  assert launch.run_local([({}, slow), ({}, bad)], tmp_path) == 3
  assert time.monotonic() - t0 < 20


def test_local_launcher_forwards_signals_and_preempted_exit_code(tmp_path):
  """SIGTERM to the launcher reaches every process; each exits with 75 (preempted) and so does the launcher."""
  child = [sys.executable, "-c", "import signal, sys, time\n"
           "signal.signal(signal.SIGTERM, lambda *a: (print('got SIGTERM', flush=True), sys.exit(75)))\n"
           "print('ready', flush=True)\ntime.sleep(60)"]
  logs = [tmp_path / f"process_{i}.log" for i in range(2)]

  def signal_when_ready():
    while not all(p.exists() and "ready" in p.read_text() for p in logs):
      time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGTERM)

  threading.Thread(target=signal_when_ready, daemon=True).start()
  t0 = time.monotonic()
  assert launch.run_local([({}, child), ({}, child)], tmp_path) == PREEMPTED_EXIT_CODE
  assert time.monotonic() - t0 < 30
  assert all("got SIGTERM" in p.read_text() for p in logs)


def _child_pids(pid):
  kids = []
  for task in Path(f"/proc/{pid}/task").iterdir():
    kids += [int(k) for k in (task / "children").read_text().split()]
  return kids


@pytest.mark.slow
def test_preemption_of_one_process_stops_both_at_one_step_and_resumes_bit_identical(setup, tmp_path):
  """SIGTERM to process 1 only: both processes agree on one step, save it, exit 75; the same command resumes and
  ends bit-identical to an uninterrupted 2-process run."""
  root, text, _ = setup
  args = pretrain_args(root, text, steps=8, checkpoint_every=8)
  ref, _ = run_two_processes(args, tmp_path / "ref", tmp_path / "ref_logs")
  work, log_dir = tmp_path / "work", tmp_path / "logs"
  cmd = [sys.executable, str(REPO / "launch/local.py"), "--processes", "2", "--devices", "4", "--init-timeout", "60",
         "--log-dir", str(log_dir), "--", *args, "--workdir", str(work)]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if losses(work) if (work / "metrics.jsonl").exists() else []:
      break
    time.sleep(0.05)
  assert proc.poll() is None, "the run ended before it could be preempted"
  victim = [pid for pid in _child_pids(proc.pid)
            if "--process-id\x001" in Path(f"/proc/{pid}/cmdline").read_text()]
  assert len(victim) == 1
  os.kill(victim[0], signal.SIGTERM)
  _, err = proc.communicate(timeout=240)
  logs = [(log_dir / f"process_{i}.log").read_text() for i in range(2)]
  assert proc.returncode == PREEMPTED_EXIT_CODE, (proc.returncode, err[-2000:], logs[0][-2000:], logs[1][-2000:])
  saved = int(sorted((work / "checkpoints").iterdir(), key=lambda p: int(p.name))[-1].name)
  assert 1 <= saved < 8 and saved == len(losses(work))
  assert all(f"checkpoint of step {saved}" in log for log in logs), logs  # the same step on both processes
  assert "SIGTERM" in logs[1]
  assert sorted(p.name for p in (work / "checkpoints" / str(saved)).glob("checksums.process_*.json")) == [
      "checksums.process_0.json", "checksums.process_1.json"]

  resumed, _ = run_two_processes(args, work, log_dir)
  assert resumed[saved:] == ref[saved:]  # the rows after the preemption, exactly
  a, b = ckpt.params_to_numpy(restore(tmp_path / "ref")), ckpt.params_to_numpy(restore(work))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert np.array_equal(x, y)


def restore(workdir):
  src = ckpt.resolve(workdir)
  return load_lib.restore_params(src.path, ckpt.read_model_config(src.path)[0])


def test_tpu_vm_dry_run(capsys):
  common = ["--name", "pod", "--zone", "us-east5-a", "--dry-run"]
  assert _dry(launch.main_tpu_vm, ["create", *common, "--accelerator-type", "v5p-64", "--spot"], capsys) == [
      "gcloud compute tpus tpu-vm create pod --zone us-east5-a --accelerator-type v5p-64 --version v2-alpha-tpuv5 "
      "--spot"]
  setup = _dry(launch.main_tpu_vm, ["setup", *common, "--source", "https://github.com/x/pplx-jax.git"], capsys)
  assert len(setup) == 2 and all("--worker=all" in s for s in setup)
  assert "git clone --depth 1 --branch main https://github.com/x/pplx-jax.git ~/pplx-jax" in setup[0]
  assert 'pip install -q -e . "jax[tpu]"' in setup[1]
  run = _dry(launch.main_tpu_vm, ["run", *common, "--", "--config", "configs/pretrain/qwen3_0_6b.py",
                                  "--workdir", "/mnt/runs/x"], capsys)
  assert run == ["gcloud compute tpus tpu-vm ssh pod --zone us-east5-a --worker=all --command 'cd ~/pplx-jax && "
                 "nohup .venv/bin/pplx-jax train --config configs/pretrain/qwen3_0_6b.py --workdir /mnt/runs/x > "
                 "~/pplx-jax-train.log 2>&1 & echo $! > ~/pplx-jax-train.pid'"]
  assert _dry(launch.main_tpu_vm, ["logs", *common], capsys) == [
      "gcloud compute tpus tpu-vm ssh pod --zone us-east5-a --worker=0 --command 'tail -n +1 -f ~/pplx-jax-train.log'"]
  assert _dry(launch.main_tpu_vm, ["delete", *common], capsys) == [
      "gcloud compute tpus tpu-vm delete pod --zone us-east5-a --quiet"]


def test_xpk_dry_run(capsys):
  lines = _dry(launch.main_xpk, ["create", "--cluster", "c1", "--workload", "run1", "--tpu-type", "v5p-128",
                                 "--docker-image", "gcr.io/p/pplx-jax:1", "--dry-run", "--", "--config",
                                 "configs/pretrain/qwen3_0_6b.py", "--workdir", "/gcs/runs/x"], capsys)
  assert lines == ["xpk workload create --cluster c1 --workload run1 --tpu-type v5p-128 --num-slices 1 "
                   "--docker-image gcr.io/p/pplx-jax:1 --command 'pplx-jax train --config "
                   "configs/pretrain/qwen3_0_6b.py --workdir /gcs/runs/x'"]
  assert _dry(launch.main_xpk, ["delete", "--cluster", "c1", "--workload", "run1", "--dry-run"], capsys) == [
      "xpk workload delete --cluster c1 --workload run1"]


def test_slurm_dry_run(capsys, tmp_path):
  argv = ["--nodes", "4", "--gpus-per-node", "8", "--partition", "gpu", "--repo", "/shared/pplx-jax",
          "--script", str(tmp_path / "job.sbatch"), "--dry-run", "--", "--config", "c.py", "--workdir", "/shared/w"]
  out = "\n".join(_dry(launch.main_slurm, argv, capsys))
  for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
               "#SBATCH --partition=gpu", "cd /shared/pplx-jax", "export PPLX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7",
               "srun --kill-on-bad-exit=1 .venv/bin/pplx-jax train --config c.py --workdir /shared/w",
               f"sbatch {tmp_path / 'job.sbatch'}"):
    assert line in out.splitlines(), line
  assert not (tmp_path / "job.sbatch").exists()  # a dry run writes nothing
  per_gpu = "\n".join(_dry(launch.main_slurm, argv[:-5] + ["--processes", "per-gpu"] + argv[-5:], capsys))
  assert "#SBATCH --ntasks-per-node=8" in per_gpu and "srun --kill-on-bad-exit=1 --gpus-per-task=1 " in per_gpu
  assert "PPLX_LOCAL_DEVICE_IDS" not in per_gpu
