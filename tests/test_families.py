"""The decoder families in the one model definition: Llama (SmolLM2, Llama 3.x rope scaling) and Qwen2 (q/k/v
biases) against transformers' `LlamaModel` / `Qwen2Model` in torch, bidirectional and causal, tied and untied, left
and right padding; HF -> pplx-jax -> HF bit for bit; encoder-only checkpoints; sharded forward = single device; and
the errors for what no family supports. (Qwen3 itself: tests/test_qwen3.py.)
"""

from __future__ import annotations

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch  # the reference: a missing torch/transformers is a failure, not a skip
import transformers
from flax import nnx
from test_qwen3 import padded_batch, state_dict_np  # the same reference helpers as the Qwen3 tests

from pplx_jax.convert import hf
from pplx_jax.core import sharding as shd
from pplx_jax.models import encoder

TOL = 1e-5
FAST_COMPILE = {"xla_backend_optimization_level": 0}


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  family: str
  tied: bool
  heads: int = 6
  kv_heads: int = 2
  hidden: int = 48
  head_dim: int | None = None  # None: hidden // heads (what Llama and Qwen2 configs usually leave implicit)
  mlp: int = 80
  layers: int = 2
  vocab: int = 197
  length: int = 11
  rope: dict | None = None
  seed: int = 0


CASES = {c.name: c for c in (
    Case("llama_tied", "llama", tied=True, seed=1),  # SmolLM2's layout: GQA, tied, no q/k norm
    Case("llama_untied_hd", "llama", tied=False, head_dim=12, seed=2),
    Case("llama3_rope", "llama", tied=False, seed=3, length=13,
         rope={"rope_type": "llama3", "rope_theta": 500_000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8}),
    Case("llama_linear_rope", "llama", tied=True, seed=4, rope={"rope_type": "linear", "rope_theta": 10_000.0,
                                                                 "factor": 3.0}),
    Case("qwen2_tied", "qwen2", tied=True, seed=5, vocab=198),  # divisible by the sharded test's mesh
    Case("qwen2_untied", "qwen2", tied=False, heads=4, kv_heads=1, hidden=32, seed=6),
)}


def hf_config(case: Case, causal: bool):
  kw = dict(vocab_size=case.vocab, hidden_size=case.hidden, intermediate_size=case.mlp,
            num_hidden_layers=case.layers, num_attention_heads=case.heads, num_key_value_heads=case.kv_heads,
            tie_word_embeddings=case.tied, is_causal=causal, rms_norm_eps=1e-6, max_position_embeddings=64)
  if case.rope is not None:
    kw["rope_parameters"] = dict(case.rope)
  if case.family == "llama":
    return transformers.LlamaConfig(head_dim=case.head_dim, **kw)
  return transformers.Qwen2Config(**kw)


def _randomize(module, seed: int):
  """transformers initialises norms to ones and biases to zeros: random ones make a swapped tensor visible."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      if name.endswith("norm.weight"):
        p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
      elif name.endswith(".bias"):
        p.copy_(0.3 * torch.randn(p.shape, generator=g))


@functools.lru_cache(maxsize=None)
def hf_lm(name: str, causal: bool):
  case = CASES[name]
  hc = hf_config(case, causal)
  torch.manual_seed(case.seed)
  cls = transformers.LlamaForCausalLM if case.family == "llama" else transformers.Qwen2ForCausalLM
  m = cls(hc).eval()
  _randomize(m, case.seed + 100)
  assert m.config.is_causal is causal
  return hc, m


@functools.lru_cache(maxsize=None)
def ours(name: str, causal: bool):
  hc, m = hf_lm(name, causal)
  cfg = hf.model_config_from_hf(hc.to_dict(), compute_dtype="float32", remat="none",
                                attention="causal" if causal else "bidirectional")
  return cfg, encoder.model_from_params(cfg, hf.params_from_hf(state_dict_np(m), cfg))


@functools.partial(jax.jit, static_argnums=0, compiler_options=FAST_COMPILE)
def _hidden_and_logits(graphdef, state, ids, mask):
  model = nnx.merge(graphdef, state)
  hidden = model(ids, mask)
  return hidden, model.logits(hidden)


def run_ours(model, ids, mask):
  h, lg = _hidden_and_logits(*nnx.split(model), jnp.asarray(ids), jnp.asarray(mask))
  return np.asarray(h), np.asarray(lg)


def run_hf(m, ids, mask):
  with torch.no_grad():
    out = m(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long),
            output_hidden_states=True)
  return out.hidden_states[-1].numpy(), out.logits.numpy()


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("name", list(CASES))
def test_hidden_states_and_logits_match_transformers(name, causal):
  case = CASES[name]
  _, m = hf_lm(name, causal)
  cfg, model = ours(name, causal)
  assert cfg.family == case.family and cfg.qk_norm is False and cfg.qkv_bias is (case.family == "qwen2")
  assert cfg.tie_embeddings is case.tied and cfg.lm_head and cfg.causal is causal
  assert cfg.head_dim == (case.head_dim or case.hidden // case.heads)
  if case.rope:
    assert cfg.rope_type == case.rope["rope_type"] and cfg.rope_theta == case.rope["rope_theta"]
  ids, mask = padded_batch(case)
  ref_h, ref_l = run_hf(m, ids, mask)
  out_h, out_l = run_ours(model, ids, mask)
  real = mask.astype(bool)
  dh = {row: float(np.abs(out_h[i] - ref_h[i])[real[i]].max()) for i, row in enumerate(["full", "right", "left"])}
  dl = float(np.abs(out_l - ref_l)[real].max())
  print(f"{name} {'causal' if causal else 'bidirectional'}: hidden max|Δ| {dh}, logits max|Δ| {dl:.3g}")
  assert max(dh.values()) <= TOL and dl <= TOL


def test_rope_scaling_changes_the_model():
  """The llama3 case's scaled frequencies are not the default ones (guards the parity test above)."""
  cfg, _ = ours("llama3_rope", False)
  plain = np.asarray(encoder.rope_frequencies(cfg.replace(rope_type="default")))
  scaled = np.asarray(encoder.rope_frequencies(cfg))
  assert np.abs(plain - scaled).max() > 1e-3


def test_bidirectional_sees_the_future():
  name = "llama_tied"
  case = CASES[name]
  ids, mask = padded_batch(case)
  mask[:] = 1
  changed = ids.copy()
  changed[:, -1] = (changed[:, -1] + 1) % case.vocab
  for causal, moves in ((False, True), (True, False)):
    _, model = ours(name, causal)
    a, b = run_ours(model, ids, mask)[0], run_ours(model, changed, mask)[0]
    assert bool(np.abs(a[:, 0] - b[:, 0]).max() > 1e-3) is moves


@pytest.mark.parametrize("kind", ["LlamaModel-tied", "LlamaForCausalLM-untied", "Qwen2Model-tied",
                                  "Qwen2ForCausalLM-untied"])
def test_round_trip_is_bit_exact(kind, tmp_path):
  from pplx_jax.convert import formats

  cls_name, tie = kind.split("-")
  name = {"Llama": "llama_tied" if tie == "tied" else "llama3_rope",
          "Qwen2": "qwen2_tied" if tie == "tied" else "qwen2_untied"}[cls_name[:5] if cls_name[0] == "Q" else "Llama"]
  hc = hf_config(CASES[name], causal=True)
  torch.manual_seed(7)
  m = getattr(transformers, cls_name)(hc).eval()
  _randomize(m, 8)
  m.save_pretrained(tmp_path / "src")
  _write_tokenizer(tmp_path / "src")
  formats.to_jax(tmp_path / "src", tmp_path / "jax")
  formats.to_hf(tmp_path / "jax", tmp_path / "back")
  from safetensors.numpy import load_file
  src, back = load_file(str(tmp_path / "src" / "model.safetensors")), load_file(str(tmp_path / "back" /
                                                                                    "model.safetensors"))
  src = {k.removeprefix("model."): v for k, v in src.items()}
  assert set(back) == set(src), (set(back) ^ set(src))
  for k in src:
    assert back[k].dtype == src[k].dtype and np.array_equal(back[k], src[k]), k
  cfg = json.loads((tmp_path / "back" / "config.json").read_text())
  assert cfg["model_type"] == hc.model_type and cfg["is_causal"] is False
  # stock transformers loads the export as a bidirectional model computing what ours computes
  loaded = transformers.AutoModel.from_pretrained(tmp_path / "back").eval()
  assert type(loaded).__name__ == {"llama": "LlamaModel", "qwen2": "Qwen2Model"}[hc.model_type]
  ids, mask = padded_batch(CASES[name])
  with torch.no_grad():
    theirs = loaded(input_ids=torch.tensor(ids, dtype=torch.long),
                    attention_mask=torch.tensor(mask, dtype=torch.long)).last_hidden_state.numpy()
  from pplx_jax.convert import load as load_lib
  model, _, _ = load_lib.load_model(tmp_path / "back", compute_dtype="float32", remat="none")
  mine = run_ours(model, ids, mask)[0]
  assert float(np.abs(mine - theirs)[mask.astype(bool)].max()) <= TOL


def _write_tokenizer(folder):
  """A minimal tokenizer.json so the folder is a complete model (exports must carry their tokenizer)."""
  from tokenizers import Tokenizer, models, pre_tokenizers
  tok = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1, "b": 2}, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.save(str(folder / "tokenizer.json"))
  (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                            "unk_token": "<unk>", "pad_token": "<unk>"}))


@pytest.mark.parametrize("cls_name", ["Qwen3Model", "LlamaModel"])
def test_encoder_only_checkpoint_imports_embeds_and_round_trips(cls_name, tmp_path):
  """tie_word_embeddings false and no lm_head.weight: the way embedding models are shared (Qwen3Config()'s
  defaults). It imports as lm_head=False, embeds like transformers, exports the same layout, and diffusion
  pretraining from it ties the head to the embeddings."""
  from pplx_jax.convert import formats
  from pplx_jax.convert import load as load_lib
  from pplx_jax.core import checkpoint as ckpt

  kw = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, tie_word_embeddings=False, is_causal=False)
  hc = (transformers.Qwen3Config(head_dim=8, **kw) if cls_name == "Qwen3Model"
        else transformers.LlamaConfig(**kw))
  torch.manual_seed(3)
  m = getattr(transformers, cls_name)(hc).eval()
  _randomize(m, 4)
  m.save_pretrained(tmp_path / "enc")
  _write_tokenizer(tmp_path / "enc")
  assert "lm_head.weight" not in hf.tensor_names(tmp_path / "enc")
  cfg = hf.folder_model_config(tmp_path / "enc")
  assert cfg.lm_head is False and cfg.tie_embeddings is False
  model, cfg2, tok_dir = load_lib.load_model(tmp_path / "enc", compute_dtype="float32", remat="none")
  assert "lm_head" not in encoder.params_of(model) and tok_dir is not None
  with pytest.raises(ValueError, match="encoder-only"):
    model.lm_head_weight()
  ids = np.random.RandomState(0).randint(0, 97, (2, 9)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, 6:] = 0
  with torch.no_grad():
    theirs = m(input_ids=torch.tensor(ids, dtype=torch.long),
               attention_mask=torch.tensor(mask, dtype=torch.long)).last_hidden_state.numpy()
  mine = np.asarray(jax.jit(lambda i, k: model(i, k))(ids, mask))
  assert float(np.abs(mine - theirs)[mask.astype(bool)].max()) <= TOL
  formats.to_jax(tmp_path / "enc", tmp_path / "jax")
  jcfg, _ = ckpt.read_model_config(ckpt.resolve(tmp_path / "jax").path)
  assert jcfg.lm_head is False
  formats.to_hf(tmp_path / "jax", tmp_path / "back")
  assert set(hf.tensor_names(tmp_path / "back")) == set(hf.tensor_names(tmp_path / "enc"))
  assert json.loads((tmp_path / "back" / "config.json").read_text())["tie_word_embeddings"] is False
  formats.to_st(tmp_path / "jax", tmp_path / "st")
  from sentence_transformers import SentenceTransformer
  st = SentenceTransformer(str(tmp_path / "st"), device="cpu")
  assert st.encode(["a b a"]).shape == (1, 32)


def test_sharded_forward_equals_single_device():
  assert jax.device_count() == 8, "conftest.py gives 8 CPU devices"
  name = "qwen2_tied"
  case = CASES[name]
  cfg, single = ours(name, False)
  params = encoder.params_of(single)
  ids, mask = padded_batch(case)
  ids, mask = np.tile(ids, (8, 1))[:8], np.tile(mask, (8, 1))[:8]
  ref = run_ours(single, ids, mask)[0]
  mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  with shd.activate(mesh, shd.DEFAULT_RULES):
    model = encoder.model_from_params(cfg, params, mesh, shd.DEFAULT_RULES)
    assert params_sharded(model)
    out = np.asarray(jax.jit(lambda m, i, k: m(i, k))(model, jnp.asarray(ids), jnp.asarray(mask)))
  assert float(np.abs(out - ref)[mask.astype(bool)].max()) <= TOL


def params_sharded(model) -> bool:
  return any(len(x.sharding.device_set) > 1 and not x.sharding.is_fully_replicated
             for x in jax.tree.leaves(encoder.params_of(model)))


@pytest.mark.parametrize("change,key", [
    (dict(hidden_act="gelu"), "hidden_act"),
    (dict(mlp_bias=True), "mlp_bias"),
    (dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}), "rope_type"),
    (dict(rope_parameters={"rope_type": "llama3", "rope_theta": 1e4, "factor": 2.0}), "low_freq_factor"),
])
def test_unsupported_configs_name_the_key(change, key):
  c = hf_config(CASES["llama_tied"], causal=False).to_dict() | change
  with pytest.raises(hf.ConversionError, match=key):
    hf.model_config_from_hf(c)
  q = hf_config(CASES["qwen2_tied"], causal=False).to_dict() | {"use_sliding_window": True}
  with pytest.raises(hf.ConversionError, match="use_sliding_window"):
    hf.model_config_from_hf(q)
  with pytest.raises(hf.ConversionError, match="MistralForCausalLM"):
    hf.model_config_from_hf(c | {"model_type": "mistral", "architectures": ["MistralForCausalLM"]})


def test_a_family_that_cannot_hold_the_switches_fails_at_export():
  cfg, _ = ours("llama_tied", False)
  with pytest.raises(hf.ConversionError, match="qk_norm"):
    hf.hf_config_from_model_config(cfg.replace(family="qwen3"))
  with pytest.raises(hf.ConversionError, match="qwen2"):
    hf.hf_config_from_model_config(cfg.replace(family="qwen2"))
