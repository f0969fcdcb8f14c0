"""Config loading, overrides and validation: bad configs fail early, naming the key and the numbers."""

import json

import pytest

from pplx_jax.core import config as config_lib
from pplx_jax.core import sharding as shd
from pplx_jax.core.model_config import ModelConfig


def test_model_config_files_load_and_validate():
  for name in ("tiny", "qwen3_0_6b", "qwen3_1_7b", "qwen3_4b", "qwen3_8b"):
    cfg = config_lib.load_config(f"configs/model/{name}.py")
    ModelConfig.from_dict(cfg)


def test_overrides_apply_with_types():
  cfg = config_lib.load_config("configs/model/tiny.py", ["--config.num_layers=3", "--config.rope_theta=500",
                                                          "--config.attention=causal", "config.tie_embeddings=False"])
  assert cfg.num_layers == 3 and cfg.rope_theta == 500.0 and isinstance(cfg.rope_theta, float)
  assert cfg.attention == "causal" and cfg.tie_embeddings is False


def test_unknown_override_key_suggests_close_keys():
  with pytest.raises(config_lib.ConfigError, match=r"unknown config key 'num_layer'.*num_layers"):
    config_lib.load_config("configs/model/tiny.py", ["--config.num_layer=3"])


def test_wrong_type_names_the_key():
  with pytest.raises(config_lib.ConfigError, match="num_layers"):
    config_lib.load_config("configs/model/tiny.py", ["--config.num_layers=many"])


def test_malformed_override_and_missing_file():
  with pytest.raises(config_lib.ConfigError, match="--config.key=value"):
    config_lib.load_config("configs/model/tiny.py", ["--num_layers=3"])
  with pytest.raises(config_lib.ConfigError, match="does_not_exist.py"):
    config_lib.load_config("configs/model/does_not_exist.py")


def test_invalid_model_values_list_every_problem():
  d = config_lib.load_config("configs/model/tiny.py").to_dict()
  d.update(num_heads=6, num_kv_heads=4, head_dim=31, attention="sideways")
  with pytest.raises(ValueError) as e:
    ModelConfig.from_dict(d)
  msg = str(e.value)
  assert "num_heads=6" in msg and "num_kv_heads=4" in msg and "head_dim=31" in msg and "sideways" in msg
  d = config_lib.load_config("configs/model/tiny.py").to_dict()
  d["hidden"] = 3
  with pytest.raises(ValueError, match=r"unknown model config keys \['hidden'\]"):
    ModelConfig.from_dict(d)


def test_layout_validation_names_numbers():
  cfg = ModelConfig.from_dict(config_lib.load_config("configs/model/qwen3_0_6b.py"))
  shd.validate_layout(cfg, {"data": 2, "fsdp": 16, "tensor": 4}, shd.DEFAULT_RULES, global_batch=1024)
  with pytest.raises(ValueError, match=r"global batch 1000 is not divisible by the batch mesh axes \('data', "
                                       r"'fsdp'\) of size 64"):
    shd.validate_layout(cfg, {"data": 4, "fsdp": 16, "tensor": 1}, shd.DEFAULT_RULES, global_batch=1000)
  with pytest.raises(ValueError, match=r"model.num_kv_heads=8 is not divisible by mesh axes \('tensor',\) of "
                                       r"size 16"):
    shd.validate_layout(cfg, {"data": 1, "fsdp": 4, "tensor": 16}, shd.DEFAULT_RULES)


def test_save_config_round_trips(tmp_path):
  cfg = config_lib.load_config("configs/model/tiny.py")
  path = config_lib.save_config(cfg, tmp_path)
  assert json.loads(path.read_text())["hidden_size"] == 64
  assert config_lib.from_json_file(path).to_dict() == cfg.to_dict()


def test_paper_scale_pretrain_configs_validate_for_their_targets():
  from pplx_jax.stages import trainer
  for path, targets in (("configs/pretrain/qwen3_0_6b.py", {"v5p-128": 64, "v6e-256": 256, "8xh100": 8}),
                        ("configs/pretrain/qwen3_4b.py", {"v5p-256": 128, "v6e-256": 256, "8xh100": 8})):
    for target, chips in targets.items():
      cfg = config_lib.load_config(f"{path}:{target}")
      assert cfg.data.seq_len == 4096 and cfg.train.global_batch == 1024 and cfg.train.steps == 60_000
      model_cfg, mesh_shape, _ = trainer.validate(cfg, num_devices=chips)
      assert mesh_shape["fsdp"] == chips
  assert config_lib.load_config("configs/pretrain/qwen3_0_6b.py").optimizer.lr == 5e-4
  assert config_lib.load_config("configs/pretrain/qwen3_4b.py").optimizer.lr == 3.16e-4


def test_pretrain_config_unknown_key_fails():
  with pytest.raises(config_lib.ConfigError, match=r"unknown config key 'train.stepz'.*train.steps"):
    config_lib.load_config("configs/pretrain/tiny.py", ["--config.train.stepz=3"])


def test_string_fields_keep_words_like_none():
  cfg = config_lib.load_config("configs/contrastive/tiny.py", ["--config.objective.quantize=none",
                                                                "--config.objective.pooling=last"])
  assert cfg.objective.quantize == "none" and cfg.objective.pooling == "last"
