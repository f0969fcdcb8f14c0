"""The README's main job at tiny scale on the CPU, on real local text (Debian's WordNet):

train a tokenizer -> masked-diffusion pretraining of a tiny Qwen3 (stage 1) -> embed texts (float32 / int8 /
binary) -> export to Hugging Face and sentence-transformers -> check that stock PyTorch loaders reproduce the
embeddings. Every step resumes or skips what is already done, so running it again continues where it stopped.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def _step(msg: str) -> float:
  print(f"[quickstart] {msg}", flush=True)
  return time.time()


def run(args) -> int:
  import os
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  from pplx_jax import embed
  from pplx_jax.convert import convert
  from pplx_jax.data import wordnet
  from pplx_jax.tokenizers import train_byte_level_bpe

  work = Path(args.workdir)
  if args.force and work.exists():
    shutil.rmtree(work)
  work.mkdir(parents=True, exist_ok=True)
  t0 = time.time()

  _step("writing the WordNet corpus (glosses and example sentences)")
  corpus = work / "data" / "wordnet.txt"
  corpus.parent.mkdir(exist_ok=True)
  texts = list(wordnet.pretraining_texts())
  corpus.write_text("\n".join(t.replace("\n", " ") for t in texts) + "\n")
  print(f"  {len(texts)} documents -> {corpus}")

  _step("training a byte-level BPE tokenizer (Qwen3-style, 4096 ids)")
  tok_dir = work / "tokenizer"
  if not tok_dir.exists():
    train_byte_level_bpe([str(corpus)], tok_dir, vocab_size=4096)

  _step("stage 1: masked-diffusion pretraining of the tiny Qwen3 on WordNet (configs/pretrain/tiny.py)")
  from pplx_jax import config as config_lib
  from pplx_jax.report import plot_pretraining
  from pplx_jax.train import stages
  from pplx_jax.train.metrics import read_jsonl
  model_dir = work / "pretrain"
  cfg = config_lib.load_config(REPO / "configs/pretrain/tiny.py",
                               [f"--config.data.tokenizer={tok_dir}", f"--config.data.dir={work / 'data'}"])
  stages.run_stage(cfg, model_dir)  # resumes, or returns at once when already complete
  png = plot_pretraining(model_dir)
  evals = [r for r in read_jsonl(model_dir / "metrics.jsonl") if "eval/ce@0.5" in r]
  print(f"  held-out masked CE at mask ratio 0.5: step {evals[0]['step']}: {evals[0]['eval/ce@0.5']:.3f} -> "
        f"step {evals[-1]['step']}: {evals[-1]['eval/ce@0.5']:.3f}; curve: {png}")

  _step("embedding WordNet lemmas and definitions")
  pairs = [p for p in wordnet.retrieval_pairs() if p["kind"] == "lemma"][:512]
  queries = [p["query"] for p in pairs]
  docs = [p["positive"] for p in pairs]
  emb = embed.embed_texts(str(model_dir), queries + docs, batch_size=64, max_length=128)
  for dtype in ("float32", "int8", "binary"):
    out = embed.finalize(emb, dtype)
    np.save(work / f"embeddings.{dtype}.npy", out)
    print(f"  {dtype}: {out.shape} {out.dtype} -> {work / f'embeddings.{dtype}.npy'}")

  _step("exporting to Hugging Face and sentence-transformers")
  hf_dir, st_dir = work / "export" / "hf", work / "export" / "st"
  for d, fn in ((hf_dir, convert.to_hf), (st_dir, convert.to_st)):
    if d.exists():
      shutil.rmtree(d)
    fn(str(model_dir), str(d))
    print(f"  {d}")

  _step("checking the exports with stock transformers and sentence-transformers")
  from sentence_transformers import SentenceTransformer
  sample = queries[:32] + docs[:32]
  ours = emb[list(range(32)) + list(range(len(queries), len(queries) + 32))]
  st = SentenceTransformer(str(st_dir), device="cpu").encode(sample, batch_size=16, convert_to_numpy=True)
  cos = np.sum(st * ours, -1) / (np.linalg.norm(st, axis=-1) * np.linalg.norm(ours, axis=-1))
  print(f"  sentence-transformers vs pplx-jax embed: min cosine {cos.min():.7f}, max |diff| "
        f"{np.abs(st - ours).max():.2e}")
  if cos.min() < 0.99999 or np.abs(st - ours).max() > 1e-4:
    raise SystemExit("quickstart: exported model does not reproduce pplx-jax embed")
  print(f"[quickstart] done in {time.time() - t0:.0f}s; outputs in {work}")
  return 0
