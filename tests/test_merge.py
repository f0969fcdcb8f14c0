"""SLERP merging (paper §4.4): mergekit's per-tensor formula, its endpoints and norms, and checkpoint merging."""

import json

import numpy as np
import pytest

from pplx_jax import cli
from pplx_jax.convert import hf, merge
from pplx_jax.convert import load as load_lib
from pplx_jax.core import checkpoint as ckpt


def reference_slerp(a, b, t, threshold=0.9995):
  """Written from Shoemake's formula with mergekit's conventions, independently of pplx_jax (float64)."""
  x, y = a.astype(np.float64), b.astype(np.float64)
  cos = float(np.sum(x * y) / (np.sqrt(np.sum(x * x)) * np.sqrt(np.sum(y * y))))
  cos = min(1.0, max(-1.0, cos))
  if abs(cos) > threshold:
    return (1 - t) * x + t * y
  omega = np.arccos(cos)
  return (np.sin((1 - t) * omega) * x + np.sin(t * omega) * y) / np.sin(omega)


def _bits(x):
  return x.view(np.uint16 if x.dtype.itemsize == 2 else np.uint32)


def test_endpoints_are_exact_bit_for_bit():
  import ml_dtypes

  rng = np.random.default_rng(0)
  for dtype in (np.float32, ml_dtypes.bfloat16):
    a = rng.normal(size=(7, 5)).astype(dtype)
    b = rng.normal(size=(7, 5)).astype(dtype)
    a[0, 0] = -0.0
    assert np.array_equal(_bits(merge.slerp(a, b, 0.0)), _bits(a))
    assert np.array_equal(_bits(merge.slerp(a, b, 1.0)), _bits(b))
    assert merge.slerp(a, b, 0.3).dtype == a.dtype
  # Without the special case the formula is exact too (sin Ω / sin Ω == 1.0, sin 0 == 0), up to the sign of
  # zero: 1.0 * -0.0 + 0.0 * b[0, 0] is +0.0 when b[0, 0] > 0.
  a = rng.normal(size=(64, 33)).astype(np.float32)
  b = rng.normal(size=(64, 33)).astype(np.float32)
  a[0, 0], b[0, 0] = -0.0, 1.0
  cos = merge.slerp_cos(a, b)
  raw0 = merge._slerp_given_cos(a, b, 0.0, cos, merge.DOT_THRESHOLD)
  raw1 = merge._slerp_given_cos(a, b, 1.0, cos, merge.DOT_THRESHOLD)
  assert np.array_equal(raw0, a) and np.array_equal(raw1, b)
  assert np.signbit(a[0, 0]) and not np.signbit(raw0[0, 0])
  assert np.signbit(merge.slerp(a, b, 0.0)[0, 0])


@pytest.mark.parametrize("t", [0.1, 0.5, 0.77])
def test_matches_independent_reference(t):
  rng = np.random.default_rng(1)
  for shape in [(3,), (16, 8), (2, 4, 6)]:
    a = rng.normal(size=shape).astype(np.float32)
    b = (0.3 * a + rng.normal(size=shape)).astype(np.float32) * 2.5  # a real angle, different norms
    out = merge.slerp(a, b, t)
    np.testing.assert_allclose(out, reference_slerp(a, b, t), rtol=2e-6, atol=1e-6)
  # float64 inputs are computed in float64
  a, b = rng.normal(size=50), rng.normal(size=50)
  np.testing.assert_allclose(merge.slerp(a, b, t), reference_slerp(a, b, t), rtol=1e-12, atol=1e-13)


def test_norm_behaviour_and_lerp_fallback():
  # Two orthogonal unit-norm tensors: the SLERP midpoint keeps unit norm, LERP shrinks it to 1/sqrt(2).
  a = np.zeros((4, 4), np.float32)
  b = np.zeros((4, 4), np.float32)
  a[0, 0], b[1, 2] = 1.0, 1.0
  mid = merge.slerp(a, b, 0.5)
  assert np.linalg.norm(mid) == pytest.approx(1.0, abs=1e-6)
  assert np.linalg.norm(merge.lerp(a, b, 0.5)) == pytest.approx(2 ** -0.5, abs=1e-6)
  assert mid[0, 0] == pytest.approx(2 ** -0.5, abs=1e-6) and mid[1, 2] == pytest.approx(2 ** -0.5, abs=1e-6)
  # Equal-norm tensors at any angle: the norm is kept at every t; LERP dips by cos(Ω/2) at the midpoint.
  rng = np.random.default_rng(2)
  a = rng.normal(size=(32, 16))
  b = rng.normal(size=(32, 16))
  b *= np.linalg.norm(a) / np.linalg.norm(b)
  for t in (0.2, 0.5, 0.9):
    assert np.linalg.norm(merge.slerp(a, b, t)) == pytest.approx(np.linalg.norm(a), rel=1e-10)
  omega = np.arccos(merge.slerp_cos(a, b))
  assert np.linalg.norm(merge.lerp(a, b, 0.5)) == pytest.approx(np.linalg.norm(a) * np.cos(omega / 2), rel=1e-10)
  # Nearly parallel (|cos| > 0.9995) and anti-parallel tensors fall back to LERP exactly.
  a = rng.normal(size=(64, 8)).astype(np.float32)
  near = (a + 1e-3 * rng.normal(size=a.shape)).astype(np.float32)
  assert merge.slerp_cos(a, near) > 0.9995
  assert np.array_equal(merge.slerp(a, near, 0.3), merge.lerp(a, near, 0.3))
  assert np.array_equal(merge.slerp(a, -a, 0.5), merge.lerp(a, -a, 0.5))
  assert not np.any(merge.slerp(a, -a, 0.5))
  # A threshold of 1 turns the fallback off: the nearly parallel pair is SLERPed (and still close to LERP).
  s = merge.slerp(a, near, 0.3, dot_threshold=1.0)
  np.testing.assert_allclose(s, reference_slerp(a, near, 0.3, threshold=1.0), rtol=1e-4, atol=1e-5)
  # A zero tensor has no direction: mergekit leaves it unnormalised, so cos = 0 and the result is sin(tπ/2)·b.
  z = np.zeros_like(a)
  np.testing.assert_allclose(merge.slerp(z, a, 0.5), np.sin(np.pi / 4) * a, rtol=1e-6)


def test_tree_mismatches_name_the_tensor():
  a = {"embed_tokens": np.ones((4, 2), np.float32), "layers": {"q_proj": np.ones((2, 3), np.float32)}}
  b = {"embed_tokens": np.ones((4, 2), np.float32), "layers": {"q_proj": np.ones((2, 4), np.float32)}}
  with pytest.raises(merge.MergeError, match=r"'layers/q_proj' has shape \(2, 3\) in A but \(2, 4\) in B"):
    merge.slerp_tree(a, b, 0.5)
  c = {"embed_tokens": np.ones((4, 2), np.float32), "layers": {"k_proj": np.ones((2, 3), np.float32)}}
  with pytest.raises(merge.MergeError, match=r"'layers/q_proj' is in A but not in B.*'layers/k_proj' is in B"):
    merge.slerp_tree(a, c, 0.5)
  with pytest.raises(merge.MergeError, match="shapes"):
    merge.slerp(np.ones(3), np.ones(4), 0.5)


# ---------------------------------------------------------------------------------------------
# Checkpoints


@pytest.fixture(scope="module")
def models(tmp_path_factory, wordnet_tokenizer):
  """A: a tiny random model from `pplx-jax init`; B: A's weights moved by a random rotation-sized step (norm
  weights kept at A's, so those tensors are parallel and take the LERP path)."""
  root = tmp_path_factory.mktemp("merge")
  tok_dir = root / "tok"
  wordnet_tokenizer.save(tok_dir)
  assert cli.main(["init", "--config", "configs/model/tiny.py", "--tokenizer", str(tok_dir),
                   "--workdir", str(root / "a"), "--config.vocab_size=520", "--seed", "1"]) == 0
  src = ckpt.resolve(root / "a")
  cfg, _ = ckpt.read_model_config(src.path)
  pa = ckpt.params_to_numpy(load_lib.restore_params(src.path, cfg))
  rng = np.random.default_rng(0)

  def move(path, x):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    if "norm" in name:
      return x.copy()
    return (x + rng.normal(scale=float(np.std(x)), size=x.shape)).astype(x.dtype)

  import jax
  pb = jax.tree_util.tree_map_with_path(move, pa)
  ckpt.save(root / "b", 0, pb, cfg)
  ckpt.copy_tokenizer(tok_dir, root / "b" / ckpt.TOKENIZER)
  return root, cfg, pa, pb


def _run_merge(argv):
  return cli.main(["merge", *argv])


def _params(path):
  src = ckpt.resolve(path)
  cfg, extra = ckpt.read_model_config(src.path)
  return ckpt.params_to_numpy(load_lib.restore_params(src.path, cfg)), cfg, extra


def test_merge_checkpoints_equals_mergekit_on_hf_tensors_and_embeds(models, capsys):
  from pplx_jax.inference.embed import embed_texts

  root, cfg, pa, pb = models
  out = root / "merged"
  assert _run_merge([str(root / "a"), str(root / "b"), "--t", "0.4", "--out", str(out)]) == 0
  assert "SLERP t=0.4" in capsys.readouterr().out
  pm, cfg_m, extra = _params(out)
  assert cfg_m == cfg
  # mergekit works on the HF tensors one at a time: per layer, q/k/v/o in HF layout.
  ha, hb, hm = (hf.params_to_hf(p, cfg) for p in (pa, pb, pm))
  assert set(hm) == set(ha) and len(hm) > 20
  for name in ha:
    np.testing.assert_allclose(hm[name], reference_slerp(ha[name], hb[name], 0.4), rtol=1e-5, atol=1e-6,
                               err_msg=name)
  record = json.loads((out / "config.json").read_text())["merge"]
  assert record["method"] == "slerp" and record["t"] == 0.4 and record["dot_threshold"] == 0.9995
  assert [s["path"] for s in record["sources"]] == [str(root / "a"), str(root / "b")]
  assert "norm" in record["lerp_tensors"] and "layers/q_norm[1]" in record["lerp_tensors"]
  assert not any("proj" in n for n in record["lerp_tensors"])
  assert extra["merge"]["t"] == 0.4
  assert (out / "tokenizer" / "tokenizer.json").read_bytes() == (root / "a" / "tokenizer" / "tokenizer.json").read_bytes()
  emb = embed_texts(str(out), ["a dog is an animal", "the act of taking"], batch_size=8, max_length=32)
  assert emb.shape == (2, cfg.hidden_size) and emb.dtype == np.float32 and np.isfinite(emb).all()


def test_endpoints_and_hf_input(models, tmp_path):
  from pplx_jax.convert import formats

  root, cfg, pa, pb = models
  formats.to_hf(root / "a", tmp_path / "a_hf")  # any model path: a Hugging Face folder as A
  merge.merge_checkpoints(tmp_path / "a_hf", root / "b", 0.0, tmp_path / "t0")
  merge.merge_checkpoints(root / "a", root / "b", 1.0, tmp_path / "t1")
  p0, _, _ = _params(tmp_path / "t0")
  p1, _, _ = _params(tmp_path / "t1")
  import jax
  assert all(jax.tree.leaves(jax.tree.map(lambda x, y: np.array_equal(_bits(x), _bits(y)), p0, pa)))
  assert all(jax.tree.leaves(jax.tree.map(lambda x, y: np.array_equal(_bits(x), _bits(y)), p1, pb)))


def test_refusals_name_the_field_and_leave_nothing_behind(models, tmp_path):
  root, cfg, pa, pb = models
  other = cfg.replace(rope_theta=5_000.0)
  ckpt.save(tmp_path / "c", 0, pb, other)
  with pytest.raises(merge.MergeError, match=r"'rope_theta' differs: 10000.0 in A .* but 5000.0 in B"):
    merge.merge_checkpoints(root / "a", tmp_path / "c", 0.5, tmp_path / "out")
  assert not (tmp_path / "out").exists()
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []
  with pytest.raises(merge.MergeError, match=r"t must be in \[0, 1\]"):
    merge.merge_checkpoints(root / "a", root / "b", 1.5, tmp_path / "out")
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "x").write_text("x")
  with pytest.raises(FileExistsError):
    merge.merge_checkpoints(root / "a", root / "b", 0.5, tmp_path / "full")
  with pytest.raises(ckpt.CheckpointError, match="no such file"):
    merge.merge_checkpoints(root / "a", tmp_path / "missing", 0.5, tmp_path / "out")
