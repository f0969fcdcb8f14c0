"""benchmarks/gpu_step.py: runs on the CPU with --tiny, without pplx_jax or torch importable, and counts the same
model FLOPs as the library's flops.py (it keeps its own copy so that it runs on a bare GPU machine)."""

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_step.py"

# pplx_jax and torch made unimportable before the script runs: it must depend on jax / optax / numpy only.
RUNNER = """
import runpy, sys
sys.modules["pplx_jax"] = None
sys.modules["torch"] = None
sys.path = [p for p in sys.path if p not in ("", ".", {root!r})]
sys.argv = [{script!r}] + sys.argv[1:]
runpy.run_path({script!r}, run_name="__main__")
"""


def test_tiny_run_prints_tables_and_sane_numbers(tmp_path):
  out_json = tmp_path / "r.json"
  proc = subprocess.run([sys.executable, "-c", RUNNER.format(root=str(ROOT), script=str(SCRIPT)), "--tiny",
                         "--steps", "2", "--warmup", "1", "--json", str(out_json)],
                        capture_output=True, text=True, timeout=600, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "| stage | batch | tokens/s | TFLOP/s | MFU |" in proc.stdout
  assert "| stage | forward (ms) | backward (ms) | optimizer (ms) |" in proc.stdout
  r = json.loads(out_json.read_text())
  assert r["backend"] == "cpu" and r["peak_source"].startswith("measured")
  by = {x["stage"]: x for x in r["results"]}
  assert set(by) == {"diffusion", "contrastive"}
  for x in by.values():
    assert x["step_s"] > 0 and x["forward_s"] > 0 and x["tokens_per_s"] > 0 and 0 < x["mfu"]
    assert math.isfinite(x["loss_at_init"])
  assert by["diffusion"]["tokens"] == 2 * 64 and by["contrastive"]["tokens"] == 4 * (16 + 32)
  # near-uniform logits at init: the 1/t-weighted masked CE averages to about ln(vocab)
  assert 0.5 * math.log(512) < by["diffusion"]["loss_at_init"] < 1.5 * math.log(512)


def test_model_flops_match_the_library():
  import importlib.util

  from pplx_jax.core.model_config import ModelConfig
  from pplx_jax.stages import flops

  spec = importlib.util.spec_from_file_location("gpu_step", SCRIPT)
  gs = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(gs)
  c = gs.QWEN3_06B
  cfg = ModelConfig(vocab_size=c["vocab"], hidden_size=c["hidden"], num_layers=c["layers"], num_heads=c["heads"],
                    num_kv_heads=c["kv_heads"], head_dim=c["head_dim"], mlp_dim=c["mlp"])
  for seq, lm_head in ((4096, True), (512, False), (128, False)):
    assert gs.forward_flops_per_token(c, seq, lm_head) == flops.forward_flops_per_token(cfg, seq, lm_head)
  n = sum(x.size for x in __import__("jax").tree.leaves(
      __import__("jax").eval_shape(lambda: gs.init_params(__import__("jax").random.key(0), c))))
  assert n == cfg.num_params()  # 596M: the same Qwen3-0.6B shapes as configs/model/qwen3_0_6b.py
