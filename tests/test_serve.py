"""Serving like the released pplx-embed: the release layout (`--to pplx`, remote code, import and round trip), the
stock sentence-transformers layout's quantised outputs (`--to st`), ONNX (`--to onnx`: onnxruntime, fastembed, late
chunking over last_hidden_state) and the config fields TEI's pplx1 loader reads.

Every export is compared with `pplx-jax embed` on the same texts: max |diff| for float32, the number of int8 codes
that differ by more than 1 (and by exactly 1), and the number of sign bits that disagree.
"""

import json
import shutil

import numpy as np
import pytest
import torch

from pplx_jax import cli
from pplx_jax.convert import formats, hf, pplx
from pplx_jax.convert import onnx as onnx_export
from pplx_jax.inference import contextual as embed_contextual
from pplx_jax.inference import embed
from pplx_jax.stages.contextual import wordnet_docs as wc

ZERO_DIMS = (3, 17)  # final-norm weights zeroed in the release fixtures: those pooled dimensions are exactly 0


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def texts(wordnet_corpus):
  lines = wordnet_corpus.read_text().splitlines()
  rng = np.random.RandomState(1)
  picked = [lines[i] for i in rng.choice(len(lines), 22, replace=False)]
  return [t[: rng.randint(1, len(t) + 1)] or "x" for t in picked] + ["x", "Ünïcödé tëxt — with dashes"]


@pytest.fixture(scope="module")
def docs():
  out = [r["chunks"] for r in list(wc.documents(limit=200))[:9]]
  out.insert(2, ["a single chunk"])
  return out


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="module")
def model_dir(root, wordnet_tokenizer):
  """A pplx-jax checkpoint (random tiny Qwen3, head_dim != hidden / heads)."""
  wordnet_tokenizer.save(root / "tok")
  assert cli.main(["init", "--config", "configs/model/tiny.py", "--tokenizer", str(root / "tok"),
                   "--workdir", str(root / "model"), "--config.vocab_size=520", "--seed", "11"]) == 0
  return root / "model"


@pytest.fixture(scope="module")
def reference(model_dir, texts):
  """`pplx-jax embed` float32 embeddings of `texts`."""
  return embed.embed_texts(str(model_dir), texts, batch_size=8)


def release_config(vocab_size: int, eos: int, variant: str) -> dict:
  """A config.json as the release ships it: the fields our generator writes plus ones it does not
  (transformers_version, bos_token_id, layer_types, max_window_layers), so a round trip must keep them."""
  return {
      "architectures": ["PPLXQwen3Model"], "attention_bias": False, "attention_dropout": 0.0,
      "auto_map": {"AutoConfig": "configuration.PPLXQwen3Config", "AutoModel": pplx.AUTO_MODEL[variant]},
      "bos_token_id": eos, "eos_token_id": eos, "dtype": "float32", "head_dim": 16, "hidden_act": "silu",
      "hidden_size": 48, "initializer_range": 0.02, "intermediate_size": 80,
      "layer_types": ["full_attention", "full_attention"], "max_position_embeddings": 512, "max_window_layers": 2,
      "model_type": "bidirectional_pplx_qwen3", "num_attention_heads": 4, "num_hidden_layers": 2,
      "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
      "rope_parameters": {"rope_theta": 1000000, "rope_type": "default"},
      "sliding_window": None, "tie_word_embeddings": True, "transformers_version": "4.57.3",
      "use_bidirectional_attention": True, "use_cache": False, "use_sliding_window": False, "vocab_size": vocab_size,
  }


def build_release(folder, tokenizer, variant: str, seed: int):
  """A folder in the release's exact layout from random tiny weights (F32, Qwen3Model names, tied embeddings)."""
  from safetensors.torch import save_file
  from transformers import Qwen3Config, Qwen3Model

  folder.mkdir(parents=True)
  cfg = release_config(tokenizer.vocab_size + 8, tokenizer.eos_id, variant)
  torch.manual_seed(seed)
  model = Qwen3Model(Qwen3Config(**{k: v for k, v in cfg.items() if k not in ("auto_map", "architectures")}))
  state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if "rotary" not in k}
  state["norm.weight"][list(ZERO_DIMS)] = 0.0
  save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
  (folder / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
  tokenizer.save(folder)
  for name in pplx.REMOTE_CODE:
    shutil.copyfile(pplx.TEMPLATES / name, folder / name)
  (folder / "modules.json").write_text(json.dumps([
      {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
      {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
      {"idx": 2, "name": "2", "path": "", "type": "st_quantize.FlexibleQuantizer", "kwargs": ["quantization"]}]))
  (folder / "1_Pooling").mkdir()
  (folder / "1_Pooling" / "config.json").write_text(json.dumps(
      {"word_embedding_dimension": 48, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
       "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
       "pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": False, "include_prompt": True}))
  return folder


@pytest.fixture(scope="module")
def releases(root, wordnet_tokenizer):
  return {v: build_release(root / f"release-{v}", wordnet_tokenizer, v, seed=i) for i, v in enumerate(pplx.VARIANTS)}


@pytest.fixture(scope="module")
def pplx_dirs(root, model_dir):
  out = {}
  for variant in pplx.VARIANTS:
    assert cli.main(["convert", str(model_dir), str(root / f"pplx-{variant}"), "--to", "pplx", "--variant",
                     variant]) == 0
    out[variant] = root / f"pplx-{variant}"
  return out


@pytest.fixture(scope="module")
def onnx_dir(root, model_dir):
  assert cli.main(["convert", str(model_dir), str(root / "onnx"), "--to", "onnx"]) == 0
  return root / "onnx"


# ---------------------------------------------------------------------------------------------- comparisons


def compare(name: str, ours: np.ndarray, theirs: np.ndarray, kind: str) -> dict:
  """Agreement numbers, printed for the report; asserts the shapes."""
  ours, theirs = np.asarray(ours), np.asarray(theirs)
  assert ours.shape == theirs.shape, (name, ours.shape, theirs.shape)
  if kind == "float":
    out = {"max_abs_diff": float(np.abs(ours.astype(np.float64) - theirs).max())}
  elif kind == "int8":
    d = np.abs(np.rint(ours).astype(np.int32) - np.rint(theirs).astype(np.int32))
    out = {"codes": d.size, "off_by_1": int((d == 1).sum()), "off_by_more": int((d > 1).sum())}
  elif kind == "bits":  # packed uint8 rows
    out = {"bits": ours.size * 8, "disagree": int(np.unpackbits(ours ^ theirs).sum())}
  else:  # +-1 signs
    out = {"signs": ours.size, "disagree": int((np.sign(ours) != np.sign(theirs)).sum())}
  print(f"[parity] {name}: {out}")
  return out


def assert_equal_embeddings(name, outputs: dict, reference: np.ndarray, float_tol=1e-4):
  """outputs: dtype -> array from another runtime; reference: pplx-jax embed float32."""
  for dtype, theirs in outputs.items():
    ours = embed.finalize(reference, dtype)
    if dtype == "float32":
      assert compare(f"{name} float32", theirs, ours, "float")["max_abs_diff"] <= float_tol
    elif dtype == "int8":
      r = compare(f"{name} int8", theirs, ours, "int8")
      assert r["off_by_more"] == 0 and r["off_by_1"] <= max(2, r["codes"] // 500)
    elif dtype in ("binary", "ubinary"):
      assert compare(f"{name} {dtype}", np.asarray(theirs, np.uint8), ours, "bits")["disagree"] <= 2
    else:
      assert compare(f"{name} sign", theirs, ours, "sign")["disagree"] <= 2


# ---------------------------------------------------------------------------------------------- embed dtypes


def test_embed_ubinary_and_sign_dtypes(model_dir, texts, reference, tmp_path):
  (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
  out = {}
  for dtype in ("binary", "ubinary", "sign"):
    assert cli.main(["embed", "--model", str(model_dir), "--input", str(tmp_path / "in.txt"), "--output",
                     str(tmp_path / f"{dtype}.npy"), "--dtype", dtype]) == 0
    out[dtype] = np.load(tmp_path / f"{dtype}.npy")
  assert out["ubinary"].dtype == np.uint8 and np.array_equal(out["ubinary"], out["binary"])
  assert out["sign"].dtype == np.int8 and out["sign"].shape == reference.shape
  np.testing.assert_array_equal(out["sign"], np.where(reference >= 0, 1, -1))
  # the packed bits are the signs, the first dimension in the most significant bit
  np.testing.assert_array_equal(np.unpackbits(out["binary"], axis=1), (out["sign"] > 0).astype(np.uint8))


# ---------------------------------------------------------------------------------------------- the release layout


def test_pplx_export_is_laid_out_as_the_release(pplx_dirs):
  for variant, folder in pplx_dirs.items():
    names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert {"config.json", "model.safetensors", "modules.json", "1_Pooling/config.json", "configuration.py",
            "modeling.py", "st_quantize.py", "tokenizer.json", "tokenizer_config.json", "README.md"} <= names
    assert not names & {"sentence_bert_config.json", "config_sentence_transformers.json"}
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "bidirectional_pplx_qwen3" and cfg["architectures"] == ["PPLXQwen3Model"]
    assert cfg["auto_map"] == {"AutoConfig": "configuration.PPLXQwen3Config", "AutoModel": pplx.AUTO_MODEL[variant]}
    assert cfg["use_bidirectional_attention"] is True and cfg["use_cache"] is False and "is_causal" not in cfg
    modules = json.loads((folder / "modules.json").read_text())
    assert [m["type"] for m in modules] == ["sentence_transformers.models.Transformer",
                                             "sentence_transformers.models.Pooling", "st_quantize.FlexibleQuantizer"]
    assert modules[2]["kwargs"] == ["quantization"] and modules[2]["path"] == ""
    pool = json.loads((folder / "1_Pooling" / "config.json").read_text())
    assert pool["pooling_mode_mean_tokens"] and not any(v for k, v in pool.items() if k.startswith("pooling_mode_")
                                                        and k != "pooling_mode_mean_tokens")
    tensors, dtype = hf.read_safetensors(folder)
    assert dtype == "float32" and "embed_tokens.weight" in tensors and "lm_head.weight" not in tensors
    assert not any(k.startswith("model.") for k in tensors)


@pytest.mark.parametrize("variant", pplx.VARIANTS)
def test_release_import_round_trip_is_bit_exact(releases, tmp_path, variant):
  src = releases[variant]
  assert cli.main(["convert", str(src), str(tmp_path / "jax"), "--to", "jax"]) == 0
  assert cli.main(["convert", str(tmp_path / "jax"), str(tmp_path / "back"), "--to", "pplx"]) == 0
  assert cli.main(["convert", str(src), str(tmp_path / "direct"), "--to", "pplx"]) == 0
  a, _ = hf.read_safetensors(src)
  for out in (tmp_path / "back", tmp_path / "direct"):
    b, _ = hf.read_safetensors(out)
    assert set(a) == set(b)
    for k in a:
      assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes(), k
    assert (out / "config.json").read_bytes() == (src / "config.json").read_bytes()
    for name in ("tokenizer.json", "tokenizer_config.json"):
      assert (out / name).read_bytes() == (src / name).read_bytes(), name
    assert json.loads((out / "modules.json").read_text()) == json.loads((src / "modules.json").read_text())
    assert pplx.variant_of(json.loads((out / "config.json").read_text())) == variant
  # a dtype or variant change rewrites the config, keeping the release's other fields
  other = "dense" if variant == "contextual" else "contextual"
  assert cli.main(["convert", str(tmp_path / "jax"), str(tmp_path / "bf16"), "--to", "pplx", "--dtype", "bfloat16",
                   "--variant", other]) == 0
  cfg, orig = (json.loads((d / "config.json").read_text()) for d in (tmp_path / "bf16", src))
  assert cfg["dtype"] == "bfloat16" and pplx.variant_of(cfg) == other
  assert {k: v for k, v in cfg.items() if k not in ("dtype", "auto_map")} == \
         {k: v for k, v in orig.items() if k not in ("dtype", "auto_map")}


def test_every_source_kind_gives_the_same_release_tensors(model_dir, pplx_dirs, tmp_path):
  """An hf export, an st export and a checkpoint step convert to the same release weights."""
  from pplx_jax.core import checkpoint as ckpt
  formats.to_hf(model_dir, tmp_path / "hf")
  formats.to_st(model_dir, tmp_path / "st")
  a, _ = hf.read_safetensors(pplx_dirs["dense"])
  for i, src in enumerate((tmp_path / "hf", tmp_path / "st", ckpt.resolve(model_dir).path)):
    pplx.to_pplx(src, tmp_path / f"p{i}")
    b, _ = hf.read_safetensors(tmp_path / f"p{i}")
    assert set(a) == set(b) and all(a[k].tobytes() == b[k].tobytes() for k in a), src
    cfg = json.loads((tmp_path / f"p{i}" / "config.json").read_text())
    assert pplx.variant_of(cfg) == "dense" and cfg["model_type"] == "bidirectional_pplx_qwen3"


def test_jax_to_release_to_jax_keeps_the_parameters(model_dir, pplx_dirs, tmp_path):
  from pplx_jax.convert import load as load_lib
  from pplx_jax.core import checkpoint as ckpt
  formats.to_jax(pplx_dirs["dense"], tmp_path / "jax")
  a = ckpt.params_to_numpy(load_lib.restore_params(ckpt.resolve(model_dir).path, ckpt.read_model_config(
      ckpt.resolve(model_dir).path)[0]))
  src = ckpt.resolve(tmp_path / "jax").path
  b = ckpt.params_to_numpy(load_lib.restore_params(src, ckpt.read_model_config(src)[0]))
  import jax
  for (pa, x), (pb, y) in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)):
    assert pa == pb and x.dtype == y.dtype and np.array_equal(x, y), pa


# ---------------------------------------------------------------------------------------------- sentence-transformers


def _st(folder, remote: bool):
  from sentence_transformers import SentenceTransformer
  return SentenceTransformer(str(folder), device="cpu", trust_remote_code=remote, local_files_only=True)


def _float_pipeline(model):
  """The release's documented float output: the pipeline without its quantizer."""
  from sentence_transformers import SentenceTransformer
  return SentenceTransformer(modules=[model[0], model[1]], device="cpu")


def test_sentence_transformers_release_layout_equals_embed(pplx_dirs, texts, reference):
  model = _st(pplx_dirs["dense"], remote=True)
  assert type(model[0].auto_model).__name__ == "PPLXQwen3Model"
  assert [type(m).__name__ for m in model] == ["Transformer", "Pooling", "FlexibleQuantizer"]
  assert "quantization" in model.get_model_kwargs()
  default = model.encode(texts, batch_size=5)
  int8 = model.encode(texts, batch_size=5, quantization="int8")
  assert default.dtype == np.float32 and np.array_equal(default, int8)  # int8 is the default
  residue = float(np.abs(default - np.rint(default)).max())
  print(f"[parity] release-layout int8: max |value - integer| (straight-through residue) {residue:.1e}")
  assert residue < 1e-4 and np.abs(default).max() <= 127
  binary = model.encode(texts, batch_size=5, quantization="binary")
  ubinary = model.encode(texts, batch_size=5, quantization="ubinary")
  assert ubinary.dtype == np.uint8 and ubinary.shape == (len(texts), reference.shape[1] // 8)
  assert set(np.unique(np.rint(binary))) <= {-1.0, 1.0}
  floats = _float_pipeline(model).encode(texts, batch_size=5)
  assert_equal_embeddings("st --to pplx", {"float32": floats, "int8": default, "sign": binary, "ubinary": ubinary},
                          reference)
  with pytest.raises(ValueError, match="Invalid quantization"):
    model.encode(texts[:2], quantization="float32")


def test_release_binary_is_pplx_jax_binary_at_exact_zeros(releases, texts):
  """The release fixture has exact-zero pooled dimensions: release ubinary sets their bit (x >= 0), as pplx-jax
  does; stock sentence-transformers `precision="ubinary"` (x > 0) clears it."""
  src = releases["dense"]
  ours = embed.embed_texts(str(src), texts, batch_size=8)
  assert np.all(ours[:, list(ZERO_DIMS)] == 0)
  model = _st(src, remote=True)
  ubinary = model.encode(texts, quantization="ubinary")
  np.testing.assert_array_equal(ubinary, embed.finalize(ours, "ubinary"))
  np.testing.assert_array_equal(np.rint(model.encode(texts, quantization="binary")), embed.finalize(ours, "sign"))
  floats = _float_pipeline(model).encode(texts)
  st_bits = np.unpackbits(_float_pipeline(model).encode(texts, precision="ubinary"), axis=1)
  differ = np.argwhere(st_bits != np.unpackbits(ubinary, axis=1))
  print(f"[parity] stock precision='ubinary' vs release ubinary at exact zeros: {len(differ)} bits differ")
  assert set(differ[:, 1]) == set(ZERO_DIMS) and len(differ) == len(texts) * len(ZERO_DIMS)
  assert np.all(floats[:, list(ZERO_DIMS)] == 0)


def test_stock_sentence_transformers_precision(model_dir, releases, texts, reference, tmp_path):
  """`--to st` (stock modules, no remote code): encode(precision=...) gives the sign bits; int8 it cannot."""
  formats.to_st(model_dir, tmp_path / "st")
  model = _st(tmp_path / "st", remote=False)
  floats = model.encode(texts)
  ubinary = model.encode(texts, precision="ubinary")
  binary = model.encode(texts, precision="binary")
  assert ubinary.dtype == np.uint8 and binary.dtype == np.int8
  assert_equal_embeddings("st --to st", {"float32": floats, "ubinary": ubinary,
                                         "binary": (binary.astype(np.int16) + 128).astype(np.uint8)}, reference)
  # precision="int8" is a per-batch min/max calibration, not round(127 tanh x)
  calibrated = model.encode(texts, precision="int8")
  r = compare("st --to st precision=int8 vs tanh int8", calibrated, embed.finalize(reference, "int8"), "int8")
  assert r["off_by_more"] > r["codes"] // 2
  # the release fixture with exact zeros, through the stock layout: those bits (only) differ
  formats.to_st(releases["dense"], tmp_path / "st0")
  zeros = _st(tmp_path / "st0", remote=False)
  ours = embed.finalize(embed.embed_texts(str(releases["dense"]), texts), "ubinary")
  differ = np.argwhere(np.unpackbits(zeros.encode(texts, precision="ubinary"), axis=1) != np.unpackbits(ours, axis=1))
  assert set(differ[:, 1]) == set(ZERO_DIMS)


# ---------------------------------------------------------------------------------------------- contextual


def test_contextual_remote_code_encode_equals_embed_contextual(pplx_dirs, model_dir, docs, tmp_path):
  from transformers import AutoModel
  inp = tmp_path / "docs.jsonl"
  inp.write_text("".join(json.dumps({"chunks": d}) + "\n" for d in docs))
  assert cli.main(["embed", "--contextual", "--model", str(model_dir), "--input", str(inp), "--output",
                   str(tmp_path / "ref.npy")]) == 0
  reference = np.load(tmp_path / "ref.npy")
  model = AutoModel.from_pretrained(str(pplx_dirs["contextual"]), trust_remote_code=True,
                                    local_files_only=True).eval()
  assert type(model).__name__ == "PPLXQwen3ContextualModel"
  got = {q: np.concatenate(model.encode(docs, quantization=q, batch_size=3)) for q in ("int8", "binary", "ubinary")}
  got["float32"] = np.concatenate(model.encode(docs, quantization=None, batch_size=3))
  assert_equal_embeddings("pplx contextual encode", {"float32": got["float32"], "int8": got["int8"],
                                                     "sign": got["binary"], "ubinary": got["ubinary"]}, reference)
  with pytest.raises(ValueError, match="max_length"):
    model.encode([sum(docs[:4], [])], max_length=16)


# ---------------------------------------------------------------------------------------------- ONNX


def test_onnx_graph_contract(onnx_dir, model_dir):
  import onnx
  import onnxruntime as ort
  proto = onnx.load(str(onnx_dir / "model.onnx"))
  opset = {o.domain: o.version for o in proto.opset_import}
  assert opset[""] == onnx_export.OPSET
  assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
  assert sorted(p.name for p in onnx_dir.iterdir()) == ["1_Pooling", "config.json", "model.onnx",
                                                         "tokenizer.json", "tokenizer_config.json"]
  session = ort.InferenceSession(str(onnx_dir / "model.onnx"), providers=["CPUExecutionProvider"])
  assert [(i.name, i.type) for i in session.get_inputs()] == [("input_ids", "tensor(int64)"),
                                                              ("attention_mask", "tensor(int64)")]
  assert [(o.name, o.type) for o in session.get_outputs()] == [
      ("pooler_output", "tensor(float)"), ("last_hidden_state", "tensor(float)"),
      ("pooler_output_int8", "tensor(int8)"), ("pooler_output_binary", "tensor(int8)")]
  for o in session.get_outputs():
    assert all(isinstance(d, str) for d in o.shape[:-1]), o.shape  # batch (and sequence) are dynamic
  for batch, seq in ((1, 1), (3, 7), (2, 40)):  # shapes other than the traced (2, 5)
    ids = np.random.RandomState(seq).randint(0, 520, (batch, seq))
    mask = np.ones_like(ids)
    mask[0, seq // 2 + 1:] = 0
    pooled, hidden, i8, b = session.run(None, {"input_ids": ids, "attention_mask": mask})
    assert pooled.shape == (batch, 64) and hidden.shape == (batch, seq, 64)
    np.testing.assert_array_equal(i8, np.round(127 * np.tanh(pooled)).astype(np.int8))
    np.testing.assert_array_equal(b, np.where(pooled >= 0, 1, -1))
  tok = json.loads((onnx_dir / "tokenizer_config.json").read_text())
  assert tok["model_max_length"] == 512


def test_onnxruntime_equals_embed(onnx_dir, texts, reference):
  from pplx_jax.convert.onnx_embed import OnnxEmbedder
  enc = OnnxEmbedder(onnx_dir)
  outs = {d: enc.embed(texts, dtype=d, batch_size=5) for d in ("float32", "int8", "binary", "sign")}
  assert outs["int8"].dtype == np.int8 and outs["binary"].dtype == np.uint8
  assert_equal_embeddings("onnxruntime", outs, reference)
  np.testing.assert_array_equal(enc.embed(texts, dtype="int8", dim=24), enc.embed(texts, dtype="int8")[:, :24])


def test_fastembed_loads_the_onnx_folder(onnx_dir, texts, reference):
  from fastembed import TextEmbedding
  from fastembed.common.model_description import ModelSource, PoolingType
  outs = {}
  for dtype, output in (("float32", "pooler_output"), ("int8", "pooler_output_int8"),
                        ("sign", "pooler_output_binary")):
    name = f"local/pplx-jax-test-{output}"
    TextEmbedding.add_custom_model(model=name, pooling=PoolingType.DISABLED, normalization=False,
                                   sources=ModelSource(hf=name), dim=64, model_file="model.onnx",
                                   output_name=output)
    model = TextEmbedding(name, specific_model_path=str(onnx_dir), cuda=False, local_files_only=True)
    outs[dtype] = np.stack(list(model.embed(texts, batch_size=5)))
  assert outs["int8"].dtype == np.int8
  outs["ubinary"] = np.packbits(outs["sign"] > 0, axis=-1)
  assert_equal_embeddings("fastembed", outs, reference)
  # the mean pooling of last_hidden_state by fastembed itself gives the float output too
  name = "local/pplx-jax-test-mean"
  TextEmbedding.add_custom_model(model=name, pooling=PoolingType.MEAN, normalization=False,
                                 sources=ModelSource(hf=name), dim=64, model_file="model.onnx",
                                 output_name="last_hidden_state")
  mean = np.stack(list(TextEmbedding(name, specific_model_path=str(onnx_dir), cuda=False,
                                     local_files_only=True).embed(texts, batch_size=5)))
  assert_equal_embeddings("fastembed mean(last_hidden_state)", {"float32": mean}, reference)


@pytest.mark.parametrize("max_length", [512, 24])
def test_onnx_late_chunking_equals_embed_contextual(onnx_dir, model_dir, docs, tmp_path, max_length):
  from pplx_jax.convert.onnx_embed import OnnxEmbedder
  inp = tmp_path / "docs.jsonl"
  inp.write_text("".join(json.dumps({"chunks": d}) + "\n" for d in docs))
  ref = {}
  for dtype in ("float32", "int8", "binary"):
    assert cli.main(["embed", "--contextual", "--model", str(model_dir), "--input", str(inp), "--output",
                     str(tmp_path / f"{dtype}.npy"), "--max-length", str(max_length), "--dtype", dtype]) == 0
    ref[dtype] = np.load(tmp_path / f"{dtype}.npy")
  enc = OnnxEmbedder(onnx_dir)
  assert enc.separator_id == embed_contextual.separator_id(enc.tokenizer)
  floats = enc.embed_contextual(docs, max_length=max_length, batch_size=3)
  r = compare(f"onnx late chunking (max_length {max_length}) float32", floats, ref["float32"], "float")
  assert r["max_abs_diff"] <= 1e-4
  r = compare(f"onnx late chunking (max_length {max_length}) int8",
              enc.embed_contextual(docs, "int8", max_length=max_length), ref["int8"], "int8")
  assert r["off_by_more"] == 0
  r = compare(f"onnx late chunking (max_length {max_length}) binary",
              enc.embed_contextual(docs, "binary", max_length=max_length), ref["binary"], "bits")
  assert r["disagree"] <= 2


def test_onnx_external_data_is_one_file(onnx_dir, tmp_path, texts):
  """Above the inline limit every weight goes to ONE model.onnx_data (tested with a tiny limit)."""
  import onnx_ir
  import onnxruntime as ort
  model = onnx_ir.load(str(onnx_dir / "model.onnx"))
  written = onnx_export.save_graph(model, tmp_path / "model.onnx", max_inline_bytes=1024)
  assert written == ["model.onnx", "model.onnx_data"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx_data"]
  assert (tmp_path / "model.onnx").stat().st_size < 100_000 < (tmp_path / "model.onnx_data").stat().st_size
  ids = np.random.RandomState(0).randint(0, 520, (2, 9))
  feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
  a = ort.InferenceSession(str(onnx_dir / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, feed)
  b = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, feed)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_pplx_with_onnx_carries_the_graph(model_dir, tmp_path):
  import onnxruntime as ort
  assert cli.main(["convert", str(model_dir), str(tmp_path / "p"), "--to", "pplx", "--with-onnx"]) == 0
  session = ort.InferenceSession(str(tmp_path / "p" / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
  assert [o.name for o in session.get_outputs()] == list(onnx_export.OUTPUT_NAMES)


# ---------------------------------------------------------------------------------------------- TEI


# What text-embeddings-inference (huggingface/text-embeddings-inference @ 0d124dc, pplx1 support from 1d6ceb4,
# PR #824) reads from a pplx-embed folder, each with the file and line it is read at:
#   router/src/lib.rs:469-483      ModelConfig: architectures (Vec<String>, required), model_type (String, required),
#                                  max_position_embeddings (or max_trained_positions, one required: lib.rs:205-210),
#                                  pad_token_id, auto_map (optional)
#   router/src/lib.rs:441-452      1_Pooling/config.json pooling_mode_* (or --pooling) -> Pool::Mean
#   backends/candle/src/lib.rs:147 #[serde(rename = "bidirectional_pplx_qwen3")] Pplx1(Pplx1Config): model_type
#                                  selects the pplx1 model, whose config is Qwen3Config (models/pplx1.rs:6)
#   backends/candle/src/models/qwen3.rs:13-37  Qwen3Config: attention_bias (bool), vocab_size, hidden_size,
#                                  intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads,
#                                  max_position_embeddings, eos_token_id (usize; TEI pads with it, qwen3.rs:482),
#                                  use_sliding_window (bool), rms_norm_eps (numbers), hidden_act ("silu"), all
#                                  required; head_dim, rope_theta / rope_parameters {rope_theta, rope_type},
#                                  sliding_window, use_bidirectional_attention (qwen3.rs:34, true = no causal mask,
#                                  qwen3.rs:602) optional
#   backends/candle/src/models/pplx1.rs:19  only Pool::Mean; pplx1.rs:35-44 pooled -> round(127 tanh x)
#   backends/candle/src/lib.rs:367-372     "Pplx1 is only supported in fp32 precision" (--dtype float32)
#   backends/ort/src/lib.rs:17-36  ORT Config: hidden_size, num_hidden_layers (required), model_type,
#                                  pad_token_id, eos_token_id, num_key_value_heads; lib.rs:424-430 takes the int8
#                                  output `pooler_output_int8` when model_type is bidirectional_pplx_qwen3;
#                                  lib.rs:98-103 loads model.onnx or onnx/model.onnx; inputs input_ids,
#                                  attention_mask (int64), plus token_type_ids / position_ids only if the graph
#                                  declares them (lib.rs:142-158)
TEI_REQUIRED = {"architectures": list, "model_type": str, "max_position_embeddings": int, "attention_bias": bool,
                "vocab_size": int, "hidden_size": int, "intermediate_size": int, "num_hidden_layers": int,
                "num_attention_heads": int, "num_key_value_heads": int, "eos_token_id": int,
                "use_sliding_window": bool, "rms_norm_eps": float, "hidden_act": str}


def _tei_check(cfg: dict):
  for key, kind in TEI_REQUIRED.items():
    assert key in cfg and isinstance(cfg[key], kind) and not (kind is int and isinstance(cfg[key], bool)), key
  assert cfg["model_type"] == "bidirectional_pplx_qwen3" and cfg["hidden_act"] == "silu"
  assert cfg["attention_bias"] is False and cfg["use_sliding_window"] is False
  assert cfg["use_bidirectional_attention"] is True
  rope = cfg.get("rope_parameters") or {}
  assert isinstance(cfg.get("rope_theta", rope.get("rope_theta")), (int, float))
  if rope:
    assert isinstance(rope.get("rope_theta"), (int, float)) and isinstance(rope.get("rope_type"), str)
  if cfg.get("head_dim") is not None:
    assert isinstance(cfg["head_dim"], int)


def test_tei_contract(pplx_dirs, onnx_dir, releases):
  import onnxruntime as ort
  for folder in (*pplx_dirs.values(), onnx_dir, *releases.values()):
    _tei_check(json.loads((folder / "config.json").read_text()))
    pool = json.loads((folder / "1_Pooling" / "config.json").read_text())
    assert pool["pooling_mode_mean_tokens"] is True and pool["pooling_mode_cls_token"] is False
    assert (folder / "tokenizer.json").is_file()
  tensors, dtype = hf.read_safetensors(pplx_dirs["dense"])
  assert dtype == "float32"  # Pplx1 runs in fp32 only
  names = [i.name for i in ort.InferenceSession(str(onnx_dir / "model.onnx"),
                                                providers=["CPUExecutionProvider"]).get_inputs()]
  assert names == ["input_ids", "attention_mask"]  # no position_ids / token_type_ids for TEI to fill
