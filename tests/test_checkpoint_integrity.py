"""Checkpoints that detect corruption, and a resume that restores into an abstract model.

- a flipped byte in any file of a saved step (array data, orbax/tensorstore metadata JSON, the OCDBT manifest, the
  model config) or a missing file is refused naming that file; a step without checksums is accepted as unverified;
- a corrupted newest step is moved to WORKDIR/corrupted/ with a log line naming the file, training resumes from
  the newest good step without building a random model, and ends bit-identical to an uninterrupted run;
- `convert` and `embed` of the corrupted step fail in one line naming the file.
"""

import shutil

import jax
import numpy as np
import pytest

from pplx_jax.cli import app
from pplx_jax.convert import load as load_lib
from pplx_jax.core import checkpoint as ckpt
from pplx_jax.core import checksums
from pplx_jax.core.model_config import ModelConfig
from pplx_jax.models import encoder
from pplx_jax.stages import registry
from test_pretrain import _params, data_setup, small_config  # noqa: F401  (data_setup is a fixture)


def _flip(path, offset=None):
  data = bytearray(path.read_bytes())
  i = len(data) // 2 if offset is None else offset
  data[i] ^= 0x5A
  path.write_bytes(bytes(data))


def _kind(rel: str) -> str:
  name = rel.rsplit("/", 1)[-1]
  if "manifest" in name:
    return "ocdbt manifest"
  if rel.startswith("model/") or name in ("_METADATA", "_CHECKPOINT_METADATA", "_sharding", "commit_success.txt"):
    return "metadata json"
  return "array data"


@pytest.fixture(scope="module")
def saved_step(tmp_path_factory):
  cfg = ModelConfig(vocab_size=64, hidden_size=16, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=32)
  params = ckpt.params_to_numpy(encoder.params_of(encoder.create_model(cfg, seed=3)))
  root = tmp_path_factory.mktemp("ckpt")
  return ckpt.save(root / "w", 0, params, cfg)


def test_a_flipped_byte_in_any_file_is_refused_naming_it(saved_step, tmp_path):
  assert checksums.verify(saved_step) is True
  listed = checksums.read(saved_step)
  on_disk = {p.relative_to(saved_step).as_posix() for p in saved_step.rglob("*")
             if p.is_file() and not p.name.startswith(checksums.PREFIX)}
  assert set(listed) == on_disk
  kinds = {}
  for rel in sorted(listed):
    kinds.setdefault(_kind(rel), []).append(rel)
  assert {"array data", "metadata json", "ocdbt manifest"} <= set(kinds), kinds
  for kind, rels in kinds.items():
    for rel in rels:
      copy = tmp_path / f"{kind.replace(' ', '_')}_{rel.replace('/', '_')}"
      shutil.copytree(saved_step, copy)
      if (copy / rel).stat().st_size == 0:
        continue
      _flip(copy / rel)
      with pytest.raises(checksums.CorruptCheckpointError, match="corrupt") as e:
        checksums.verify(copy)
      assert e.value.file == str(copy / rel), (kind, rel)
      assert rel.rsplit("/", 1)[-1] in str(e.value)
  # A missing file, an unreadable checksum file, and a step saved without checksums.
  copy = tmp_path / "missing"
  shutil.copytree(saved_step, copy)
  victim = kinds["array data"][0]
  (copy / victim).unlink()
  with pytest.raises(checksums.CorruptCheckpointError, match="missing"):
    ckpt.resolve(copy)
  copy = tmp_path / "bad_sums"
  shutil.copytree(saved_step, copy)
  (copy / f"{checksums.PREFIX}0.json").write_text("{not json")
  with pytest.raises(checksums.CorruptCheckpointError, match="checksum file"):
    checksums.verify(copy)
  copy = tmp_path / "no_sums"
  shutil.copytree(saved_step, copy)
  (copy / f"{checksums.PREFIX}0.json").unlink()
  assert checksums.verify(copy) is False
  assert ckpt.resolve(copy).kind == "pplx"


def test_checksums_are_split_by_the_process_that_wrote_each_file():
  assert checksums.owner("params/ocdbt.process_3/d/abc") == 3
  assert checksums.owner("params/ocdbt.process_0/manifest.ocdbt") == 0
  assert checksums.owner("params/manifest.ocdbt") == 0
  assert checksums.owner("params/_METADATA") == 0


def test_corrupt_newest_step_is_quarantined_and_resume_is_bit_identical(data_setup, tmp_path, monkeypatch, capsys):  # noqa: F811
  _, tok, ds = data_setup
  one = jax.devices()[:1]
  ref = tmp_path / "ref"
  registry.run_stage(small_config(tok, ds, **{"train.steps": 6}), ref, devices=one)
  work = tmp_path / "w"
  registry.run_stage(small_config(tok, ds, **{"train.steps": 6}), work, devices=one, stop_after=4)
  assert ckpt.manager(work).all_steps() == [2, 4]
  step4 = ckpt.step_dir(work, 4)
  data_file = next(p for p in sorted(step4.glob("params/**/d/*")) if p.is_file() and p.stat().st_size > 64)
  _flip(data_file)
  keep = tmp_path / "corrupt_step4"
  shutil.copytree(step4, keep)

  texts = tmp_path / "texts.txt"
  texts.write_text("a word\n")
  # convert and embed refuse the corrupted step (and its workdir) in one line naming the file.
  for argv in (["convert", str(work), str(tmp_path / "hf"), "--to", "hf"],
               ["embed", "--model", str(keep), "--input", str(texts), "--output", str(tmp_path / "e.npy")]):
    capsys.readouterr()
    assert app.main(argv) == 2
    err = capsys.readouterr().err
    assert data_file.name in err and "corrupt" in err, err
  with pytest.raises(ckpt.CorruptCheckpointError):
    load_lib.source_params(keep)

  # Resume: no random init (the model is restored into its abstract shape), step 4 quarantined, resumed from 2.
  def no_init(*a, **k):
    raise AssertionError("resume must not build a random model")

  monkeypatch.setattr(encoder, "create_model", no_init)
  capsys.readouterr()
  res = registry.run_stage(small_config(tok, ds, **{"train.steps": 6}), work, devices=one)
  out = capsys.readouterr().out
  assert res.step == 6
  assert data_file.name in out and "corrupted/4" in out, out
  assert f"resumed from {ckpt.step_dir(work, 2)} at step 2" in out
  assert (work / ckpt.CORRUPTED / "4" / data_file.relative_to(step4)).is_file()
  assert checksums.verify(ckpt.step_dir(work, 6))
  a, b = _params(ref), _params(work)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert np.array_equal(x, y)
