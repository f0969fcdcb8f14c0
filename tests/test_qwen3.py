"""Qwen3 model: parity with transformers (the independent reference), masking semantics, remat/scan equivalence,
HF conversion round trips and errors, and the published model sizes.

Everything runs on CPU in float32 with tiny random models; transformers/torch are the reference implementation.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch  # the reference: a missing torch/transformers is a failure, not a skip
import transformers
from flax import nnx

from pplx_jax.convert import hf
from pplx_jax.core.model_config import ModelConfig
from pplx_jax.models import encoder

TOL = 1e-5  # max |Δ| against transformers in float32


# ---------------------------------------------------------------------------------------------------- fixtures


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  heads: int
  kv_heads: int
  head_dim: int  # deliberately != hidden // heads
  hidden: int
  mlp: int
  tied: bool
  length: int
  vocab: int = 211
  layers: int = 2
  theta: float = 10_000.0
  eps: float = 1e-6
  seed: int = 0


CASES = {c.name: c for c in (
    Case("mha4_tied", heads=4, kv_heads=4, head_dim=16, hidden=48, mlp=80, tied=True, length=13, seed=1),
    Case("gqa4x2_untied", heads=4, kv_heads=2, head_dim=24, hidden=64, mlp=96, tied=False, length=7, seed=2,
         theta=1_000_000.0),
    Case("gqa8x2_tied", heads=8, kv_heads=2, head_dim=8, hidden=32, mlp=72, tied=True, length=13, seed=3, eps=1e-5),
    Case("mqa6x1_untied", heads=6, kv_heads=1, head_dim=20, hidden=40, mlp=64, tied=False, length=7, seed=4,
         layers=3),
)}


def hf_config(case: Case, causal: bool):
  return transformers.Qwen3Config(
      vocab_size=case.vocab, hidden_size=case.hidden, intermediate_size=case.mlp, num_hidden_layers=case.layers,
      num_attention_heads=case.heads, num_key_value_heads=case.kv_heads, head_dim=case.head_dim,
      tie_word_embeddings=case.tied, is_causal=causal, rope_theta=case.theta, rms_norm_eps=case.eps)


def _randomize_norms(module, seed: int):
  """transformers initialises every RMSNorm to ones; random scales make a swapped q_norm/k_norm visible."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      if name.endswith("norm.weight"):
        p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))


def state_dict_np(module) -> dict[str, np.ndarray]:
  return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


@functools.lru_cache(maxsize=None)
def hf_lm(name: str, causal: bool):
  """transformers Qwen3ForCausalLM (its `.model` is a plain Qwen3Model). Same seed -> same weights either way."""
  case = CASES[name]
  hc = hf_config(case, causal)
  torch.manual_seed(case.seed)
  m = transformers.Qwen3ForCausalLM(hc).eval()
  _randomize_norms(m, case.seed + 100)
  assert m.config.is_causal is causal
  return hc, m


@functools.lru_cache(maxsize=None)
def ours(name: str, causal: bool):
  hc, m = hf_lm(name, causal)
  cfg = hf.model_config_from_hf(hc.to_dict(), compute_dtype="float32", remat="none",
                                attention="causal" if causal else "bidirectional")
  return cfg, encoder.model_from_params(cfg, hf.params_from_hf(state_dict_np(m), cfg))


def padded_batch(case: Case, seed: int = 0):
  """Batch 3: row 0 full, row 1 padded on the right, row 2 padded on the left."""
  rng = np.random.RandomState(seed)
  ids = rng.randint(0, case.vocab, (3, case.length)).astype(np.int32)
  mask = np.ones((3, case.length), np.int32)
  mask[1, case.length - 3:] = 0
  mask[2, :4] = 0
  return ids, mask


# LLVM -O0 halves CPU compile time; the HLO graph, fusions and float32 math are unchanged. (conftest.py sets it
# process-wide too; repeated here so this file stays fast when XLA_FLAGS is overridden.)
FAST_COMPILE = {"xla_backend_optimization_level": 0}


@functools.partial(jax.jit, static_argnums=0, compiler_options=FAST_COMPILE)
def _hidden_and_logits(graphdef, state, ids, mask):
  model = nnx.merge(graphdef, state)
  hidden = model(ids, mask)
  return hidden, model.logits(hidden)


@functools.partial(jax.jit, static_argnums=0, compiler_options=FAST_COMPILE)
def _packed(graphdef, state, ids, segment_ids):
  return nnx.merge(graphdef, state)(ids, segment_ids=segment_ids)


def run_ours(model, ids, mask=None, logits=False):
  mask = np.ones_like(ids) if mask is None else mask
  h, lg = _hidden_and_logits(*nnx.split(model), jnp.asarray(ids), jnp.asarray(mask))
  return (np.asarray(h), np.asarray(lg)) if logits else np.asarray(h)


def run_hf(m, ids, mask):
  with torch.no_grad():
    return m.model(input_ids=torch.tensor(ids, dtype=torch.long),
                   attention_mask=torch.tensor(mask, dtype=torch.long)).last_hidden_state.numpy()


# ---------------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("name", list(CASES))
def test_hidden_states_match_transformers(name, causal):
  case = CASES[name]
  hc, m = hf_lm(name, causal)
  cfg, model = ours(name, causal)
  assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size, cfg.mlp_dim, cfg.num_layers) == (
      case.heads, case.kv_heads, case.head_dim, case.hidden, case.mlp, case.layers)
  assert cfg.tie_embeddings is case.tied and cfg.rope_theta == case.theta and cfg.rms_norm_eps == case.eps
  assert cfg.causal is causal

  ids, mask = padded_batch(case)
  ref = run_hf(m, ids, mask)
  out = run_ours(model, ids, mask)
  real = mask.astype(bool)
  assert np.isfinite(out).all()
  deltas = {row: float(np.abs(out[i] - ref[i])[real[i]].max())
            for i, row in enumerate(["full", "right_pad", "left_pad"])}
  print(f"{name} {'causal' if causal else 'bidirectional'} max|Δ| per row: {deltas}")
  for row, d in deltas.items():
    assert d <= TOL, f"{row}: max |Δ| {d:.3g} > {TOL}"


@pytest.mark.parametrize("name", list(CASES))
def test_lm_logits_match_transformers(name):
  case = CASES[name]
  hc, m = hf_lm(name, True)
  cfg, model = ours(name, True)
  assert ("lm_head" in encoder.params_of(model)) is (not case.tied)
  ids, mask = padded_batch(case, seed=1)
  with torch.no_grad():
    ref = m(input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long)).logits.numpy()
  _, out = run_ours(model, ids, mask, logits=True)
  assert out.shape == ref.shape == (3, case.length, case.vocab) and out.dtype == np.float32
  real = mask.astype(bool)
  d = float(np.abs(out - ref)[real].max())
  print(f"{name} logits max|Δ| {d:.3g} (max |logit| {np.abs(ref[real]).max():.3g})")
  assert d <= TOL


def test_causal_differs_from_bidirectional():
  name = "gqa4x2_untied"
  case = CASES[name]
  _, m_bi = hf_lm(name, False)
  _, m_ca = hf_lm(name, True)
  sd_bi, sd_ca = state_dict_np(m_bi), state_dict_np(m_ca)
  assert sd_bi.keys() == sd_ca.keys() and all(np.array_equal(sd_bi[k], sd_ca[k]) for k in sd_bi)
  ids, mask = padded_batch(case)
  mask[:] = 1  # no padding: the flag alone must change the result
  # transformers: the is_causal config flag really switches the mask (guards the reference itself).
  hf_bi, hf_ca = run_hf(m_bi, ids, mask), run_hf(m_ca, ids, mask)
  assert np.abs(hf_bi[:, 0] - hf_ca[:, 0]).max() > 1e-2
  # Position 0 sees only itself when causal and the whole row when bidirectional.
  ours_bi, ours_ca = run_ours(ours(name, False)[1], ids), run_ours(ours(name, True)[1], ids)
  assert np.abs(ours_bi[:, 0] - ours_ca[:, 0]).max() > 1e-2
  assert np.abs(ours_bi - hf_bi).max() <= TOL and np.abs(ours_ca - hf_ca).max() <= TOL


def test_bidirectional_sees_the_future_and_ignores_padding():
  name = "mha4_tied"
  case = CASES[name]
  ids, mask = padded_batch(case)
  _, bi = ours(name, False)
  _, ca = ours(name, True)
  base_bi, base_ca = run_ours(bi, ids, mask), run_ours(ca, ids, mask)

  # Changing the last real token of each row changes position 0 (bidirectional) and leaves it alone (causal).
  last = [case.length - 1, case.length - 4, case.length - 1]
  first = [0, 0, 4]
  changed = ids.copy()
  for i, j in enumerate(last):
    changed[i, j] = (changed[i, j] + 1) % case.vocab
  new_bi, new_ca = run_ours(bi, changed, mask), run_ours(ca, changed, mask)
  for i in range(3):
    assert np.abs(new_bi[i, first[i]] - base_bi[i, first[i]]).max() > 1e-3, f"row {i}"
    np.testing.assert_array_equal(new_ca[i, first[i]:last[i]], base_ca[i, first[i]:last[i]])

  # Changing the ids under padding changes nothing on real tokens, exactly.
  scrambled = np.where(mask == 0, (ids + 17) % case.vocab, ids)
  assert (scrambled != ids).sum() == 7
  real = mask.astype(bool)
  for model, base in ((bi, base_bi), (ca, base_ca)):
    out = run_ours(model, scrambled, mask)
    np.testing.assert_array_equal(out[real], base[real])


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_packed_row_equals_separate_segments(causal):
  name = "gqa8x2_tied"
  _, model = ours(name, causal)
  _, m = hf_lm(name, causal)
  ids = np.random.RandomState(5).randint(0, CASES[name].vocab, (1, 9)).astype(np.int32)
  # Row 0 packs two segments; rows 1 and 2 hold each segment alone (right-padded, positions from 0).
  seg = np.array([[1, 1, 1, 2, 2, 2, 2, 0, 0],
                  [1, 1, 1, 0, 0, 0, 0, 0, 0],
                  [1, 1, 1, 1, 0, 0, 0, 0, 0]], np.int32)
  rows = np.concatenate([ids, np.pad(ids[:, :3], ((0, 0), (0, 6))), np.pad(ids[:, 3:7], ((0, 0), (0, 5)))])
  out = np.asarray(_packed(*nnx.split(model), jnp.asarray(rows), jnp.asarray(seg)))
  d_ours = max(np.abs(out[0, :3] - out[1, :3]).max(), np.abs(out[0, 3:7] - out[2, :4]).max())
  # The independent reference: transformers on each segment as its own unpadded sequence.
  first = run_hf(m, ids[:, :3], np.ones((1, 3), np.int32))[0]
  second = run_hf(m, ids[:, 3:7], np.ones((1, 4), np.int32))[0]
  d_hf = max(np.abs(out[0, :3] - first).max(), np.abs(out[0, 3:7] - second).max())
  print(f"packed vs separate ({'causal' if causal else 'bidirectional'}): ours max|Δ| {d_ours:.3g}, "
        f"vs transformers {d_hf:.3g}")
  assert d_ours <= TOL and d_hf <= TOL


# ---------------------------------------------------------------------------------------------------- scan / remat / dtype


@functools.lru_cache(maxsize=None)
def _tiny():
  import configs.model.tiny as tiny

  cfg = ModelConfig.from_dict(tiny.get_config()).replace(vocab_size=256, compute_dtype="float32", remat="none",
                                                         scan_layers=True)
  rng = np.random.RandomState(0)
  # Random numpy parameters in the model's layout (norm scales around 1, the rest like the 0.02 init).
  shapes = nnx.to_pure_dict(nnx.state(encoder.abstract_model(cfg), nnx.Param))
  params = jax.tree_util.tree_map_with_path(
      lambda p, s: ((1.0 if "norm" in jax.tree_util.keystr(p) else 0.0) + (0.2 if "norm" in jax.tree_util.keystr(p)
                    else 0.02) * rng.randn(*s.shape)).astype(np.float32), shapes)
  ids = rng.randint(0, cfg.vocab_size, (2, 11)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, 8:] = 0
  w = rng.randn(2, 11, cfg.hidden_size).astype(np.float32)
  return cfg, params, ids, mask, w


@functools.partial(jax.jit, static_argnums=0, compiler_options=FAST_COMPILE)
def _value_and_grad(graphdef, state, ids, mask, w):
  def loss(state):
    h = nnx.merge(graphdef, state)(ids, mask)
    return jnp.mean(h * w), h

  (_, h), g = jax.value_and_grad(loss, has_aux=True)(state)
  return h, g


@functools.lru_cache(maxsize=None)
def _hidden_and_grad(cfg):
  _, params, ids, mask, w = _tiny()
  graphdef, state = nnx.split(encoder.model_from_params(cfg, params))
  h, g = _value_and_grad(graphdef, state, ids, mask, w)
  flat = {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(
      nnx.to_pure_dict(g))[0]}
  return np.asarray(h), flat


def test_scan_and_remat_variants_agree():
  """Tolerance 1e-6 relative to each tensor's largest entry (remat changes XLA's fusions, hence the rounding)."""
  cfg = _tiny()[0]
  ref_h, ref_g = _hidden_and_grad(cfg)
  assert min(np.abs(v).max() for v in ref_g.values()) > 1e-4  # every gradient is non-trivial
  _, params, ids, mask, _ = _tiny()
  for variant in (dict(scan_layers=False), dict(remat="full"), dict(remat="dots")):
    # The remat is really in the traced program (a checkpoint around the layer body), not silently dropped.
    model = encoder.model_from_params(cfg.replace(**variant), params)
    jaxpr = str(jax.make_jaxpr(lambda i, m: model(i, m))(ids, mask))
    assert bool(re.search(r"\bremat\w*\[", jaxpr)) is ("remat" in variant), variant
    assert bool(re.search(r"\bscan\[", jaxpr)) is ("scan_layers" not in variant), variant
    h, g = _hidden_and_grad(cfg.replace(**variant))
    assert g.keys() == ref_g.keys()
    dh = float(np.abs(h - ref_h).max())
    dg = {k: float(np.abs(g[k] - ref_g[k]).max()) for k in ref_g}
    rel_g = max(dg[k] / np.abs(ref_g[k]).max() for k in ref_g)
    print(f"{variant}: forward max|Δ| {dh:.3g} (max|h| {np.abs(ref_h).max():.3g}), grad max|Δ| "
          f"{max(dg.values()):.3g}, largest |Δ|/max|g| per tensor {rel_g:.3g}")
    assert dh <= 1e-6 * np.abs(ref_h).max(), variant
    assert rel_g <= 1e-6, variant


def test_bfloat16_compute_is_close_to_float32():
  cfg, params, ids, mask, _ = _tiny()
  ref = _hidden_and_grad(cfg)[0]  # the float32 forward, already compiled for the remat test
  model16 = encoder.model_from_params(cfg.replace(compute_dtype="bfloat16"), params)
  out, _ = _hidden_and_logits(*nnx.split(model16), jnp.asarray(ids), jnp.asarray(mask))
  assert out.dtype == jnp.bfloat16
  assert encoder.params_of(model16)["embed_tokens"].dtype == jnp.float32  # params stay in param_dtype
  out = np.asarray(out.astype(jnp.float32))
  real = mask.astype(bool)
  rel = float(np.linalg.norm(out[real] - ref[real]) / np.linalg.norm(ref[real]))
  rel_max = float(np.abs(out[real] - ref[real]).max() / np.abs(ref[real]).max())
  print(f"bf16 vs fp32: relative L2 {rel:.3g}, max|Δ|/max|ref| {rel_max:.3g}")
  assert np.isfinite(out).all() and rel <= 3e-2 and rel_max <= 3e-2


# ---------------------------------------------------------------------------------------------------- conversion


@pytest.mark.parametrize("kind", ["Qwen3Model-tied", "Qwen3ForCausalLM-tied", "Qwen3ForCausalLM-untied"])
def test_round_trip_is_bit_exact(kind):
  cls_name, tie = kind.split("-")
  name = "mha4_tied" if tie == "tied" else "gqa4x2_untied"
  hc = hf_config(CASES[name], causal=False)
  torch.manual_seed(7)
  m = getattr(transformers, cls_name)(hc).eval()
  _randomize_norms(m, 8)
  sd = state_dict_np(m)
  cfg = hf.model_config_from_hf(hc.to_dict(), compute_dtype="float32", remat="none")
  assert cfg.attention == "bidirectional"
  model = encoder.model_from_params(cfg, hf.params_from_hf(sd, cfg))
  prefix = "model." if cls_name == "Qwen3ForCausalLM" else ""
  back = hf.params_to_hf(encoder.params_of(model), cfg, prefix=prefix)
  expected_keys = set(sd)
  if cls_name == "Qwen3ForCausalLM" and tie == "tied":
    # torch's state_dict lists the tied head too; safetensors (save_pretrained) and params_to_hf do not.
    np.testing.assert_array_equal(sd["lm_head.weight"], sd["model.embed_tokens.weight"])
    expected_keys.discard("lm_head.weight")
  assert set(back) == expected_keys
  for k in expected_keys:
    assert back[k].dtype == sd[k].dtype and back[k].shape == sd[k].shape, k
    assert np.array_equal(back[k], sd[k]), k
  # ... and the tensors HF would load: load_state_dict(strict) accepts them.
  m2 = getattr(transformers, cls_name)(hc)
  missing, unexpected = m2.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in back.items()}, strict=False)
  assert not unexpected and set(missing) <= {"lm_head.weight"}


def _base_sd():
  hc = hf_config(CASES["mha4_tied"], causal=False)
  torch.manual_seed(0)
  m = transformers.Qwen3Model(hc)
  cfg = hf.model_config_from_hf(hc.to_dict())
  return state_dict_np(m), cfg


def test_conversion_errors_name_the_tensor():
  sd, cfg = _base_sd()
  hf.params_from_hf(sd, cfg)  # the unmodified dict converts

  missing = dict(sd)
  del missing["layers.1.mlp.up_proj.weight"]
  with pytest.raises(hf.ConversionError, match=r"missing tensor 'layers\.1\.mlp\.up_proj\.weight'"):
    hf.params_from_hf(missing, cfg)

  wrong = dict(sd)
  wrong["layers.0.self_attn.k_proj.weight"] = np.zeros((cfg.num_kv_heads * cfg.head_dim + 1, cfg.hidden_size),
                                                       np.float32)
  with pytest.raises(hf.ConversionError, match=r"layers\.0\.self_attn\.k_proj\.weight.*shape \(65, 48\)"):
    hf.params_from_hf(wrong, cfg)

  extra = dict(sd)
  extra["layers.0.self_attn.q_proj.bias"] = np.zeros((cfg.num_heads * cfg.head_dim,), np.float32)
  with pytest.raises(hf.ConversionError, match=r"unexpected tensors.*layers\.0\.self_attn\.q_proj\.bias"):
    hf.params_from_hf(extra, cfg)

  untied = dataclasses.replace(cfg, tie_embeddings=False)  # an untied config needs lm_head.weight
  with pytest.raises(hf.ConversionError, match=r"missing tensor 'lm_head\.weight'"):
    hf.params_from_hf(sd, untied)

  bad_head = dict(sd, **{"lm_head.weight": sd["embed_tokens.weight"] + 1})  # tied, but a different copy
  with pytest.raises(hf.ConversionError, match="lm_head.weight"):
    hf.params_from_hf(bad_head, cfg)


def test_unknown_architectures_are_rejected():
  mistral = transformers.MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=4, architectures=["MistralForCausalLM"]).to_dict()
  with pytest.raises(hf.ConversionError, match="MistralForCausalLM"):
    hf.model_config_from_hf(mistral)
  mistral.pop("architectures")
  with pytest.raises(hf.ConversionError, match="mistral"):
    hf.model_config_from_hf(mistral)


# ---------------------------------------------------------------------------------------------------- published sizes

# config module -> (layers, hidden, heads, kv heads, mlp, tied), published (total, non-embedding) and exact counts.
PUBLISHED = {
    "qwen3_0_6b": ((28, 1024, 16, 8, 3072, True), ("596M", "440M"), (596_049_920, 440_467_456)),
    "qwen3_1_7b": ((28, 2048, 16, 8, 6144, True), ("1.72B", "1.41B"), (1_720_574_976, 1_409_410_048)),
    "qwen3_4b": ((36, 2560, 32, 8, 9728, True), ("4.02B", "3.63B"), (4_022_468_096, 3_633_511_936)),
    "qwen3_8b": ((36, 4096, 32, 8, 12288, False), ("8.19B", "6.95B"), (8_190_735_360, 6_946_075_648)),
}


def _matches_published(n: int, published: str) -> bool:
  """True when n rounds to the published figure at its stated precision ("596M", "1.72B")."""
  value, unit = published[:-1], published[-1]
  decimals = len(value.split(".")[1]) if "." in value else 0
  scale = {"M": 1e6, "B": 1e9}[unit]
  return round(n / scale, decimals) == float(value)


def _load(name) -> ModelConfig:
  return ModelConfig.from_dict(importlib.import_module(f"configs.model.{name}").get_config())


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_config_fields(name):
  cfg = _load(name)
  (layers, hidden, heads, kv, mlp, tied), _, _ = PUBLISHED[name]
  assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.mlp_dim, cfg.tie_embeddings) == (
      layers, hidden, heads, kv, mlp, tied)
  assert cfg.head_dim == 128 and cfg.vocab_size == 151_936
  assert cfg.rope_theta == 1_000_000.0 and cfg.rms_norm_eps == 1e-6
  assert cfg.attention == "bidirectional"


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_parameter_counts(name):
  cfg = _load(name)
  _, (pub_total, pub_body), (exact_total, exact_body) = PUBLISHED[name]
  params = nnx.to_pure_dict(nnx.state(encoder.abstract_model(cfg), nnx.Param))
  sizes = {k: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(v)) for k, v in params.items()}
  actual_total = sum(sizes.values())
  actual_body = actual_total - sizes["embed_tokens"] - sizes.get("lm_head", 0)
  print(f"{name}: {actual_total:,} total, {actual_body:,} without embeddings")
  assert ("lm_head" in params) is (not cfg.tie_embeddings)
  assert cfg.num_params() == actual_total == exact_total
  assert cfg.num_params(include_embeddings=False) == actual_body == exact_body
  assert _matches_published(actual_total, pub_total), (actual_total, pub_total)
  assert _matches_published(actual_body, pub_body), (actual_body, pub_body)
