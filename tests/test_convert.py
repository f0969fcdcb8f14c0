"""Conversion: Hugging Face <-> pplx-jax <-> sentence-transformers, checked with stock PyTorch loaders."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pplx_jax import cli
from pplx_jax.convert import formats, hf
from pplx_jax.core import checkpoint as ckpt
from pplx_jax.inference import embed


def _hf_model(cls, tied: bool, seed: int, vocab: int, **kw):
  from transformers import Qwen3Config
  cfg = Qwen3Config(vocab_size=vocab, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=tied,
                    rope_theta=10_000.0, max_position_embeddings=512, **kw)
  torch.manual_seed(seed)
  return cls(cfg).eval()


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory, wordnet_tokenizer):
  """A tied Qwen3ForCausalLM folder and an untied Qwen3Model folder, each with the tokenizer files."""
  from transformers import Qwen3ForCausalLM, Qwen3Model
  root = tmp_path_factory.mktemp("hf")
  dirs = {}
  for name, cls, tied in (("tied_lm", Qwen3ForCausalLM, True), ("untied", Qwen3ForCausalLM, False),
                          ("encoder", Qwen3Model, True)):
    m = _hf_model(cls, tied, seed=len(dirs), vocab=wordnet_tokenizer.vocab_size + 8)
    m.save_pretrained(root / name)
    wordnet_tokenizer.save(root / name)
    dirs[name] = root / name
  return dirs


def _tensors(folder):
  tensors, _ = hf.read_safetensors(folder)
  return tensors


@pytest.mark.parametrize("name", ["tied_lm", "untied", "encoder"])
def test_hf_to_jax_to_hf_is_bit_exact(hf_dirs, tmp_path, name):
  src = hf_dirs[name]
  formats.to_jax(src, tmp_path / "jax")
  assert ckpt.resolve(tmp_path / "jax").kind == "pplx"
  assert (tmp_path / "jax" / "tokenizer" / "tokenizer.json").is_file()
  formats.to_hf(tmp_path / "jax", tmp_path / "hf")
  a, b = _tensors(src), _tensors(tmp_path / "hf")
  strip = lambda k: k[len("model."):] if k.startswith("model.") else k
  a = {strip(k): v for k, v in a.items()}
  if name == "tied_lm":
    a.pop("lm_head.weight", None)  # a tied copy; the export stores the embedding once
  assert set(a) == set(b)
  for k in a:
    assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
  cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
  assert cfg["is_causal"] is False and cfg["model_type"] == "qwen3"
  assert "auto_map" not in cfg  # stock transformers, no remote code
  assert (tmp_path / "hf" / "tokenizer.json").is_file()


def test_bfloat16_weights_round_trip_bit_exact(tmp_path, wordnet_tokenizer):
  from transformers import Qwen3Model
  m = _hf_model(Qwen3Model, True, seed=7, vocab=wordnet_tokenizer.vocab_size).to(torch.bfloat16)
  m.save_pretrained(tmp_path / "src")
  wordnet_tokenizer.save(tmp_path / "src")
  formats.to_jax(tmp_path / "src", tmp_path / "jax")
  cfg, extra = ckpt.read_model_config(ckpt.resolve(tmp_path / "jax").path)
  assert cfg.param_dtype == "bfloat16" and extra["source_dtype"] == "bfloat16"
  formats.to_hf(tmp_path / "jax", tmp_path / "hf")
  a, b = _tensors(tmp_path / "src"), _tensors(tmp_path / "hf")
  assert set(a) == set(b)
  for k in a:
    assert b[k].dtype.name == "bfloat16" and np.array_equal(a[k].view(np.uint16), b[k].view(np.uint16)), k


def test_sharded_export_loads_in_transformers_and_reimports(hf_dirs, tmp_path):
  from transformers import AutoModel
  formats.to_jax(hf_dirs["untied"], tmp_path / "jax")
  formats.to_hf(tmp_path / "jax", tmp_path / "hf", max_shard_bytes=20_000)
  index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
  shards = sorted(set(index["weight_map"].values()))
  assert len(shards) > 3 and all((tmp_path / "hf" / s).is_file() for s in shards)
  assert not (tmp_path / "hf" / "model.safetensors").exists()
  model = AutoModel.from_pretrained(tmp_path / "hf", local_files_only=True)
  assert type(model).__name__ == "Qwen3Model"
  # The sharded folder converts back to the same tensors.
  formats.to_jax(tmp_path / "hf", tmp_path / "jax2")
  formats.to_hf(tmp_path / "jax2", tmp_path / "hf2")
  a, b = _tensors(tmp_path / "hf"), _tensors(tmp_path / "hf2")
  assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


TEXTS = ["dog", "a member of the genus Canis that has been domesticated by man since prehistoric times",
         "run", "move fast by using one's feet, with one foot off the ground at any given time",
         "the quick brown fox jumps over the lazy dog", "x", "Ünïcödé tëxt — with dashes", "42 is the answer",
         "a" * 3, "bank: sloping land (especially the slope beside a body of water)"]


@pytest.fixture(scope="module")
def exported(hf_dirs, tmp_path_factory):
  root = tmp_path_factory.mktemp("exported")
  formats.to_jax(hf_dirs["untied"], root / "jax")
  formats.to_hf(root / "jax", root / "hf")
  formats.to_st(root / "jax", root / "st")
  emb = embed.embed_texts(str(root / "jax"), TEXTS, batch_size=4)
  return root, emb


def _agree(a, b):
  cos = np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
  return cos.min(), np.abs(a - b).max()


def test_sentence_transformers_reproduces_embed(exported):
  from sentence_transformers import SentenceTransformer
  root, emb = exported
  st = SentenceTransformer(str(root / "st"), device="cpu")
  out = st.encode(TEXTS, batch_size=3, convert_to_numpy=True)
  cos, diff = _agree(out, emb)
  print(f"sentence-transformers vs pplx-jax embed: min cosine {cos:.8f}, max |diff| {diff:.2e}")
  assert cos >= 0.99999 and diff <= 1e-4
  assert not st[0].auto_model.config.is_causal


def test_automodel_mean_pooling_reproduces_embed(exported):
  from transformers import AutoModel, AutoTokenizer
  root, emb = exported
  tok = AutoTokenizer.from_pretrained(root / "hf", local_files_only=True)
  model = AutoModel.from_pretrained(root / "hf", local_files_only=True).eval()
  batch = tok(TEXTS, padding=True, return_tensors="pt")
  with torch.no_grad():
    hidden = model(**batch).last_hidden_state
  m = batch["attention_mask"][..., None].float()
  out = ((hidden * m).sum(1) / m.sum(1)).numpy()
  cos, diff = _agree(out, emb)
  print(f"AutoModel + mean pooling vs pplx-jax embed: min cosine {cos:.8f}, max |diff| {diff:.2e}")
  assert cos >= 0.99999 and diff <= 1e-4


def test_exported_model_is_bidirectional_in_transformers(exported):
  from transformers import AutoModel
  root, _ = exported
  model = AutoModel.from_pretrained(root / "hf", local_files_only=True).eval()
  ids = torch.tensor([[5, 6, 7, 8, 9]])
  ids2 = ids.clone()
  ids2[0, -1] = 10
  with torch.no_grad():
    a = model(input_ids=ids).last_hidden_state[0, 0]
    b = model(input_ids=ids2).last_hidden_state[0, 0]
  assert (a - b).abs().max() > 1e-4  # the first token sees the last one


def test_every_model_path_kind_gives_the_same_embeddings(exported):
  root, emb = exported
  step_dir = ckpt.resolve(root / "jax").path
  for path in (root / "hf", root / "st", step_dir):
    out = embed.embed_texts(str(path), TEXTS, batch_size=4)
    assert np.abs(out - emb).max() <= 1e-5, path


def test_export_from_workdir_step_and_hf_folder(exported, tmp_path):
  root, _ = exported
  step_dir = ckpt.resolve(root / "jax").path
  assert step_dir.name == "0" and step_dir.parent.name == "checkpoints"
  for i, src in enumerate((step_dir, root / "hf")):
    formats.to_hf(src, tmp_path / f"out{i}")
    a, b = _tensors(root / "hf"), _tensors(tmp_path / f"out{i}")
    assert all(np.array_equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------- failures


def _no_partial(parent: Path, name: str):
  leftovers = [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.partial-")]
  assert leftovers == [], leftovers


def test_missing_tensor_names_it_and_leaves_nothing(hf_dirs, tmp_path):
  from safetensors.numpy import save_file
  src = tmp_path / "broken"
  src.mkdir()
  for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
    (src / f).write_bytes((hf_dirs["encoder"] / f).read_bytes())
  tensors = _tensors(hf_dirs["encoder"])
  del tensors["layers.1.mlp.up_proj.weight"]
  save_file(tensors, str(src / "model.safetensors"))
  with pytest.raises(hf.ConversionError, match=r"layers\.1\.mlp\.up_proj\.weight"):
    formats.to_jax(src, tmp_path / "out")
  assert not (tmp_path / "out").exists()
  _no_partial(tmp_path, "out")


def test_wrong_shape_and_unexpected_tensor_are_named(hf_dirs, tmp_path):
  from safetensors.numpy import save_file
  for case in ("shape", "unexpected"):
    src = tmp_path / case
    src.mkdir()
    (src / "config.json").write_bytes((hf_dirs["encoder"] / "config.json").read_bytes())
    tensors = _tensors(hf_dirs["encoder"])
    if case == "shape":
      tensors["layers.0.self_attn.k_proj.weight"] = np.zeros((3, 48), np.float32)
      pattern = r"layers\.0\.self_attn\.k_proj\.weight.*shape \(3, 48\)"
    else:
      tensors["layers.0.self_attn.q_proj.bias"] = np.zeros((64,), np.float32)
      pattern = r"unexpected.*layers\.0\.self_attn\.q_proj\.bias"
    save_file(tensors, str(src / "model.safetensors"))
    with pytest.raises(hf.ConversionError, match=pattern):
      formats.to_jax(src, tmp_path / f"out_{case}")
    assert not (tmp_path / f"out_{case}").exists()
    _no_partial(tmp_path, f"out_{case}")


def test_unsupported_architecture_is_named(hf_dirs, tmp_path):
  src = tmp_path / "mistral"
  src.mkdir()
  cfg = json.loads((hf_dirs["encoder"] / "config.json").read_text())
  cfg.update(model_type="mistral", architectures=["MistralForCausalLM"])  # not a family pplx-jax computes
  (src / "config.json").write_text(json.dumps(cfg))
  (src / "model.safetensors").write_bytes((hf_dirs["encoder"] / "model.safetensors").read_bytes())
  with pytest.raises(hf.ConversionError, match="MistralForCausalLM"):
    formats.to_jax(src, tmp_path / "out")


def test_non_empty_destination_is_refused(hf_dirs, tmp_path, capsys):
  dst = tmp_path / "dst"
  dst.mkdir()
  (dst / "keep.txt").write_text("mine")
  rc = cli.main(["convert", str(hf_dirs["encoder"]), str(dst), "--to", "jax"])
  assert rc == 2
  assert str(dst) in capsys.readouterr().err
  assert [p.name for p in dst.iterdir()] == ["keep.txt"]


def test_unknown_source_is_named(tmp_path, capsys):
  (tmp_path / "nothing").mkdir()
  rc = cli.main(["convert", str(tmp_path / "nothing"), str(tmp_path / "out"), "--to", "hf"])
  assert rc == 2
  err = capsys.readouterr().err
  assert "nothing" in err and "not a Hugging Face model folder" in err


def test_cli_round_trip_with_sharding(hf_dirs, tmp_path):
  assert cli.main(["convert", str(hf_dirs["tied_lm"]), str(tmp_path / "j"), "--to", "jax"]) == 0
  assert cli.main(["convert", str(tmp_path / "j"), str(tmp_path / "h"), "--to", "hf",
                   "--max-shard-size", "30KB"]) == 0
  assert (tmp_path / "h" / "model.safetensors.index.json").is_file()
  assert cli.main(["convert", str(tmp_path / "j"), str(tmp_path / "s"), "--to", "st"]) == 0
  modules = json.loads((tmp_path / "s" / "modules.json").read_text())
  assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling"]
  pool = json.loads((tmp_path / "s" / "1_Pooling" / "config.json").read_text())
  assert pool["pooling_mode_mean_tokens"] is True
