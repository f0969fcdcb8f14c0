"""Pods: workdir, data, checkpoints, metrics and conversions in a bucket — against a real GCS API on loopback
(fake-gcs-server, `gcs_server` fixture; STORAGE_EMULATOR_HOST points gcsfs, tensorstore and google-cloud-storage
at it).

- a tiny pretraining run with workdir, data and tokenizer in the bucket, SIGKILLed after a checkpoint and started
  again with the same command == an uninterrupted local run, bit for bit;
- a pair run with workdir and data in the bucket, stopped after a checkpoint and resumed == an uninterrupted local
  run, bit for bit; `pplx-jax convert gs://… gs://… --to hf` of it, read back == the checkpoint;
- 2 processes x 4 devices write one checkpoint (and each its checksums) into the bucket.
"""

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import jax
import numpy as np
import pytest

from pplx_jax import cli
from pplx_jax.convert import load as load_lib
from pplx_jax.core import checkpoint as ckpt
from pplx_jax.core import checksums
from pplx_jax.core import paths
from pplx_jax.data.records import read_jsonl
from pplx_jax.stages import registry
from test_contrastive_train import small as pair_config
from test_multihost import pretrain_args, run_two_processes
from test_pretrain import _env, _train_cmd, _wait_for_step

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bucket(gcs_server, tmp_path_factory, wordnet_tokenizer):
  """One bucket holding a prepared text dataset, pair dataset, tokenizer and start model (uploaded once)."""
  from pplx_jax.stages.contrastive import prepare as pair_prepare
  from pplx_jax.stages.pretrain import prepare as pretrain_prepare
  root = tmp_path_factory.mktemp("pods")
  wordnet_tokenizer.save(root / "tok")
  text = pretrain_prepare.prepare_wordnet(root / "data", validation_fraction=0.1, limit=600)
  pairs = pair_prepare.prepare_wordnet_pairs(root / "pairs", kinds=("lemma",), limit=400)
  assert cli.main(["init", "--config", "configs/model/tiny.py", "--tokenizer", str(root / "tok"),
                   "--workdir", str(root / "start"), "--config.vocab_size=512", "--config.hidden_size=32",
                   "--config.num_layers=2", "--config.num_heads=4", "--config.num_kv_heads=2",
                   "--config.head_dim=8", "--config.mlp_dim=64"]) == 0
  url = gcs_server.create_bucket("pods-test")
  for local, name in ((root / "tok", "tok"), (text, "data/wordnet/1.0.0"), (pairs, "pairs/1.0.0"),
                      (root / "start", "start")):
    paths.copy_tree(local, f"{url}/{name}")
  return dict(root=root, url=url, local=dict(tok=root / "tok", text=text, pairs=pairs, start=root / "start"))


def test_the_emulator_variable_points_every_client(monkeypatch):
  """STORAGE_EMULATOR_HOST -> gcsfs (endpoint, anonymous), tensorstore and array_record's endpoints; changed or
  unset, nothing stale stays behind (the next bucket path reconfigures against the test server again)."""
  import fsspec
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", "127.0.0.1:1234")
  paths.configure_gcs()
  assert fsspec.config.conf["gs"]["endpoint_url"] == "http://127.0.0.1:1234" and fsspec.config.conf["gs"]["token"] == "anon"
  assert os.environ["TENSORSTORE_GCS_HTTP_URL"] == os.environ["CLOUD_STORAGE_EMULATOR_ENDPOINT"] == "http://127.0.0.1:1234"
  from etils.epath import backend as epath_backend
  assert epath_backend.fsspec_backend.fs("gs://bkt/x").storage_options["endpoint_url"] == "http://127.0.0.1:1234"
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:999")
  paths.as_path("gs://bkt/x")  # any bucket path follows a changed variable, epath's cached gcsfs included
  assert os.environ["CLOUD_STORAGE_EMULATOR_ENDPOINT"] == fsspec.config.conf["gs"]["endpoint_url"] == "http://127.0.0.1:999"
  assert epath_backend.fsspec_backend.fs("gs://bkt/x").storage_options["endpoint_url"] == "http://127.0.0.1:999"
  monkeypatch.delenv("STORAGE_EMULATOR_HOST")
  paths.configure_gcs()
  assert "endpoint_url" not in fsspec.config.conf["gs"] and "TENSORSTORE_GCS_HTTP_URL" not in os.environ
  assert fsspec.config.conf["gs"]["use_listings_cache"] is False


def test_one_path_layer_for_local_and_bucket_paths(bucket, tmp_path, monkeypatch):
  url = bucket["url"]
  monkeypatch.chdir(tmp_path)
  assert paths.as_path("runs/x") == Path("runs/x") and not paths.as_path("runs/x").is_absolute()  # stays relative
  p = paths.as_path(f"{url}/layer/a.txt")
  assert str(p) == f"{url}/layer/a.txt" and paths.is_url(p) and str(p.parent) == f"{url}/layer"  # never gs:/
  paths.write_text_atomic(p, "one")
  paths.write_text_atomic(p, "two")
  assert p.read_text() == "two" and paths.size(p) == 3
  with pytest.raises(FileExistsError, match="not empty"):
    with paths.staged_output(f"{url}/layer"):
      pass
  with pytest.raises(RuntimeError):  # a failed output folder leaves nothing in the bucket
    with paths.staged_output(f"{url}/staged") as tmp:
      (tmp / "half.txt").write_text("x")
      raise RuntimeError("failed half-way")
  assert not paths.as_path(f"{url}/staged").exists()
  with paths.staged_output(f"{url}/staged") as tmp:
    (tmp / "sub").mkdir()
    (tmp / "sub" / "b.jsonl").write_text('{"text": "b"}\n')
    (tmp / "c.txt").write_text("c\n")
  assert [str(f) for f in paths.glob_files(f"{url}/staged/**")] == [f"{url}/staged/c.txt", f"{url}/staged/sub/b.jsonl"]
  with pytest.raises(FileNotFoundError, match="matched no file"):
    paths.glob_files(f"{url}/staged/*.parquet")
  back = paths.local_copy(f"{url}/staged", into=tmp_path / "back")
  assert (back / "sub" / "b.jsonl").read_text() == '{"text": "b"}\n'
  paths.move(f"{url}/staged", f"{url}/moved")
  assert not paths.as_path(f"{url}/staged").exists() and (paths.as_path(f"{url}/moved") / "c.txt").is_file()
  assert not (tmp_path / "gs:").exists()


def test_prepare_and_tokenizer_train_read_and_write_the_bucket(bucket, tmp_path):
  """`pplx-jax prepare` and `tokenizer train` with inputs and output in the bucket: the same as local."""
  from pplx_jax.data import prepared
  url = bucket["url"]
  lines = [f"document number {i} about {w}" for i, w in enumerate(["cats", "dogs", "trees", "rivers"] * 10)]
  (tmp_path / "a.txt").write_text("\n".join(lines[:25]) + "\n")
  (tmp_path / "b.txt").write_text("\n".join(lines[25:]) + "\n")
  for f in ("a.txt", "b.txt"):
    paths.copy_tree(tmp_path / f, f"{url}/raw/{f}")
  assert cli.main(["prepare", "--input", str(tmp_path / "*.txt"), "--out", str(tmp_path / "data"), "--name", "t",
                   "--validation-fraction", "0.2"]) == 0
  assert cli.main(["prepare", "--input", f"{url}/raw/*.txt", "--out", f"{url}/prepared", "--name", "t",
                   "--validation-fraction", "0.2"]) == 0
  assert (paths.as_path(f"{url}/prepared/t/1.0.0") / "dataset_info.json").is_file()
  def rows(source):  # the records' source is their input file: the same name, local or in the bucket
    return [(prepared.as_text(r["text"]), int(r["line"]), prepared.as_text(r["source"]))
            for r in prepared.read_records(source, list(range(len(source))))]

  for split in ("train", "validation"):
    a = rows(prepared.load_split(tmp_path / "data" / "t", split))
    b = rows(prepared.load_split(f"{url}/prepared/t", split))
    assert len(a) == len(b) > 0 and all(s.startswith(f"{url}/raw/") for _, _, s in b)
    assert [(t, n, os.path.basename(s)) for t, n, s in a] == [(t, n, os.path.basename(s)) for t, n, s in b]
  meta = prepared.dataset_metadata(f"{url}/prepared/t/1.0.0")["params"]["inputs"]
  assert [m["path"] for m in meta] == [f"{url}/raw/a.txt", f"{url}/raw/b.txt"]

  # a built-in source prepared straight into the bucket (its JSONL staging file stays local)
  assert cli.main(["prepare", "--wordnet", "--triplets", "--limit", "200", "--out", f"{url}/prepared"]) == 0
  assert len(prepared.load_split(f"{url}/prepared/wordnet_triplets", "train")) > 0

  # `pplx-jax tokenizer train --input gs://... --out gs://...` == the same training on the local files
  from pplx_jax.core.tokenizers import load_tokenizer
  train = ["tokenizer", "train", "--kind", "bpe", "--vocab-size", "300"]
  assert cli.main(train + ["--input", f"{url}/raw/*.txt", "--out", f"{url}/tok_trained"]) == 0
  assert cli.main(train + ["--input", str(tmp_path / "*.txt"), "--out", str(tmp_path / "tok_trained")]) == 0
  assert (paths.as_path(f"{url}/tok_trained") / "tokenizer.json").is_file()
  a, b = load_tokenizer(tmp_path / "tok_trained"), load_tokenizer(f"{url}/tok_trained")
  assert a.vocab_size == b.vocab_size and a.encode(lines[7]) == b.encode(lines[7])


def _same_params(a, b):
  pa = ckpt.params_to_numpy(_restore(a))
  pb = ckpt.params_to_numpy(_restore(b))
  for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
    assert np.array_equal(x, y)


def _restore(workdir):
  src = ckpt.resolve(workdir)
  return load_lib.restore_params(src.path, ckpt.read_model_config(src.path)[0])


def test_pretraining_in_a_bucket_survives_sigkill_bit_identical_to_local(bucket, tmp_path):
  url, local = bucket["url"], bucket["local"]
  steps = 15  # long enough to be killed part-way: after step 3's checkpoint, four more follow
  ref = tmp_path / "local"
  subprocess.run(_train_cmd(ref, local["tok"], local["text"], steps), env=_env(), check=True, capture_output=True,
                 timeout=600)
  work = paths.as_path(f"{url}/run1")
  cmd = _train_cmd(work, f"{url}/tok", f"{url}/data/wordnet", steps)
  proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=open(tmp_path / "killed.log", "w"))
  # metrics.jsonl reaches the bucket at each checkpoint (every 3 steps): step 3's row means step 3 is saved
  seen = _wait_for_step(work, proc, 3)
  if seen is not None:
    os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert seen is not None and seen < steps, ("the run finished before it could be killed",
                                             (tmp_path / "killed.log").read_text()[-3000:])
  assert ckpt.manager(work).latest_step() < steps
  out = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"resumed from {url}/run1/checkpoints/" in out.stdout
  assert not Path("gs:").exists()  # nothing written to a local folder named after the URL
  _same_params(ref, work)
  assert checksums.verify(ckpt.step_dir(work, steps))
  rows = [r for r in read_jsonl(work / "metrics.jsonl") if "loss" in r]
  assert rows[-1]["step"] == steps and (work / "tensorboard").is_dir() and (work / "tokenizer").is_dir()


def test_pair_run_in_a_bucket_resumes_and_converts_bucket_to_bucket(bucket, tmp_path):
  url, local, root = bucket["url"], bucket["local"], bucket["root"]
  one = jax.devices()[:1]
  ref = tmp_path / "local"
  registry.run_stage(pair_config(root, [local["pairs"]]), ref, devices=one)
  cfg = pair_config(root, [f"{url}/pairs"], **{"train.checkpoint_every": 2})
  cfg.train.init_from = f"{url}/start"
  work = f"{url}/pairs_run"
  assert registry.run_stage(cfg, work, devices=one, stop_after=2).step == 2
  assert ckpt.manager(work).all_steps() == [2]
  res = registry.run_stage(cfg, work, devices=one)
  assert res.step == 4
  _same_params(ref, work)

  dst = f"{url}/exports/hf"
  assert cli.main(["convert", work, dst, "--to", "hf"]) == 0
  assert paths.as_path(dst, ).joinpath("config.json").is_file()
  back, _, tok, _ = load_lib.source_params(dst)
  want = ckpt.params_to_numpy(_restore(work))
  for x, y in zip(jax.tree.leaves(back), jax.tree.leaves(want)):
    np.testing.assert_array_equal(x, y)
  assert tok is not None and (tok / "tokenizer.json").is_file()

  # embed input and output, eval data and its --json in the bucket == the same commands on the local run
  texts = ["a small dog", "the cat sat on the mat", "rivers flow"]
  paths.as_path(f"{url}/texts.txt").write_text("\n".join(texts) + "\n")
  assert cli.main(["embed", "--model", work, "--input", f"{url}/texts.txt", "--output", f"{url}/emb.npy"]) == 0
  with paths.as_path(f"{url}/emb.npy").open("rb") as f:
    emb = np.load(f)
  (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n")
  assert cli.main(["embed", "--model", str(ref), "--input", str(tmp_path / "texts.txt"),
                   "--output", str(tmp_path / "emb.npy")]) == 0
  np.testing.assert_array_equal(emb, np.load(tmp_path / "emb.npy"))
  # the Hugging Face export in the bucket as a model (safetensors are read from a local copy)
  assert cli.main(["embed", "--model", dst, "--input", f"{url}/texts.txt", "--output", f"{url}/emb_hf.npy"]) == 0
  with paths.as_path(f"{url}/emb_hf.npy").open("rb") as f:
    np.testing.assert_allclose(np.load(f), emb, rtol=0, atol=1e-6)
  common = ["--dtypes", "float32", "--max-queries", "20", "--max-docs", "60", "--ks", "10"]
  assert cli.main(["eval", "--model", work, "--data", f"{url}/pairs", "--json", f"{url}/eval.json"] + common) == 0
  assert cli.main(["eval", "--model", str(ref), "--data", str(local["pairs"]), "--json", str(tmp_path / "eval.json")]
                  + common) == 0
  got = json.loads(paths.as_path(f"{url}/eval.json").read_text())
  assert got["metrics"] == json.loads((tmp_path / "eval.json").read_text())["metrics"] and got["num_queries"] == 20

  # A flipped byte in the bucket's newest step: reading it fails naming the file; resume's check moves it to
  # WORKDIR/corrupted/<step> (a bucket has no rename: copied, then deleted) and picks the older step.
  step4 = ckpt.step_dir(work, 4)
  rel = max(checksums.read(step4), key=lambda r: paths.size(step4 / r))  # the largest file: array data
  data = bytearray((step4 / rel).read_bytes())
  data[len(data) // 2] ^= 0xFF
  (step4 / rel).write_bytes(bytes(data))
  with pytest.raises(checksums.CorruptCheckpointError, match=re.escape(f"{step4 / rel}: checkpoint file is corrupt")):
    load_lib.source_params(work)
  assert ckpt.newest_good_step(work, [2, 4], log=lambda msg: None) == 2
  assert not step4.exists() and (paths.as_path(work) / ckpt.CORRUPTED / "4" / rel).is_file()
  assert ckpt.manager(work).all_steps() == [2]


@pytest.mark.slow
def test_two_processes_write_one_checkpoint_into_the_bucket(bucket, tmp_path):
  url, root = bucket["url"], bucket["root"]
  (root / "mh").mkdir(exist_ok=True)
  args = pretrain_args(root, f"{url}/data/wordnet", steps=2, checkpoint_every=2)
  args = [a.replace(f"--config.data.tokenizer={root / 'tok'}", f"--config.data.tokenizer={url}/tok") for a in args]
  work = f"{url}/two"
  run_two_processes(args, work, tmp_path / "logs")
  step = ckpt.step_dir(work, 2)
  names = sorted(p.name for p in step.iterdir() if p.name.startswith(checksums.PREFIX))
  assert names == ["checksums.process_0.json", "checksums.process_1.json"]
  assert checksums.verify(step)
  assert sorted(p.name for p in paths.as_path(work).joinpath("checkpoints").iterdir()) == ["2"]
  assert [r["step"] for r in read_jsonl(f"{work}/metrics.jsonl") if "loss" in r] == [1, 2]


@pytest.mark.slow
def test_pipeline_with_its_workdir_in_the_bucket(bucket, monkeypatch):
  """A short pipeline (pretrain -> pair, SLERP of the two, export, evaluation, report) whose workdir — and so its
  prepared data, stages, merge, export and report — is in the bucket; run again, it skips every step."""
  from pplx_jax.recipe import pipeline
  from pplx_jax.core import config as config_lib
  url = bucket["url"]
  cfg = config_lib.load_config(REPO / "configs/pipeline/tiny.py")
  fast = ("--config.train.steps=3", "--config.train.eval_every=3", "--config.train.checkpoint_every=3",
          "--config.train.log_every=1", "--config.train.async_checkpointing=False", "--config.data.wordnet_limit=600",
          "--config.train.global_batch=8")
  with cfg.unlocked():
    cfg.tokenizer.path = f"{url}/tok"
    cfg.order = ("pretrain", "pair")
    cfg.stages.pretrain.overrides = fast + ("--config.train.eval_batches=1",)
    cfg.stages.pair.overrides = fast + ("--config.eval.max_queries=40", "--config.eval.max_docs=150")
    cfg.merge.a, cfg.merge.b = "pretrain", "pair"
    cfg.ablation.stage = ""
    cfg.eval.update(models=("pair", "merged"), max_queries=40, max_docs=150, contextual_data="", baselines=("bm25",),
                    mteb=False, batch_size=32)
  work = paths.as_path(f"{url}/pipeline")
  real = registry.run_stage
  calls = []
  monkeypatch.setattr(registry, "run_stage", lambda c, w, **kw: calls.append(paths.as_path(w).name) or real(c, w, **kw))
  report = pipeline.run_pipeline(cfg, str(work))
  assert calls == ["pretrain", "pair"]
  assert str(report) == f"{url}/pipeline/report.md" and "## Stages" in report.read_text()
  assert (work / "loss_curves.png").stat().length > 5000
  assert (work / "data" / "wordnet" / "1.0.0" / "dataset_info.json").is_file()  # prepared straight into the bucket
  assert (work / "export" / "hf" / "model.safetensors").is_file() and (work / "export" / "st" / "modules.json").is_file()
  parity = json.loads((work / "eval" / "parity.json").read_text())["results"]
  assert abs(parity["sentence-transformers"] - parity["pplx-jax"]) < 1e-6 and parity["max_abs_embedding_diff"] < 1e-4
  assert json.loads((work / "merged" / "config.json").read_text())["merge"]["t"] == 0.5
  assert not Path("gs:").exists()
  calls.clear()
  pipeline.run_pipeline(cfg, str(work))  # the done markers in the bucket: nothing is trained again
  assert calls == []
