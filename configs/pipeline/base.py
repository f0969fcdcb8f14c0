"""Shared pipeline config: the paper's stage graph (paper §3-4) and what the report evaluates.

pretrain (stage 1) -> pair (stage 2) -> contextual (3a) and triplet (3b) -> SLERP(contextual, triplet) -> export.
`ablation_causal_last` trains the pair stage again from the same pretrained start as a decoder (causal attention,
last-token pooling) with the same budget: the paper's bidirectional-vs-causal ablation.
"""

import ml_collections


def stage(config: str, init_from: str = "", overrides=()) -> ml_collections.ConfigDict:
  """`init_from`: an earlier stage's name, a model path (Hugging Face folder, pplx-jax workdir) or "" (random)."""
  return ml_collections.ConfigDict(dict(config=config, init_from=init_from, overrides=tuple(overrides)))


def base(configs: dict, pretrain_init: str = "", triplet_overrides=()) -> ml_collections.ConfigDict:
  p = ml_collections.ConfigDict()
  # tokenizer.path: a folder with tokenizer.json (Qwen3's); from_model: a model path (GGUF, HF folder, checkpoint)
  # whose own tokenizer is copied; both "": train a BPE tokenizer of vocab_size on the training split of `corpus`
  # (local corpora joined by "+").
  p.tokenizer = ml_collections.ConfigDict(dict(path="", from_model="", vocab_size=4096, corpus="wordnet"))
  # The start model evaluated before any training, one row per "attention+pooling" (e.g. "causal+last",
  # "bidirectional+mean"): what each stage is measured against. model "" = no zero-shot rows.
  p.zero_shot = ml_collections.ConfigDict(dict(model="", rows=()))
  p.data_dir = ""  # "" = <workdir>/data
  p.stages = ml_collections.ConfigDict()
  p.stages.pretrain = stage(configs["pretrain"], pretrain_init)
  p.stages.pair = stage(configs["pair"], "pretrain")
  p.stages.contextual = stage(configs["contextual"], "pair")
  p.stages.triplet = stage(configs["triplet"], "pair", triplet_overrides)
  # The ablation switch (configs/contrastive/base.py: apply_variant("causal_last")) as overrides, so that it applies
  # to any pair config.
  p.stages.ablation_causal_last = stage(configs["pair"], "pretrain",
                                        ("--config.model.attention=causal", "--config.objective.pooling=last"))
  p.order = ("pretrain", "pair", "contextual", "triplet", "ablation_causal_last")
  p.merge = ml_collections.ConfigDict(dict(name="merged", a="contextual", b="triplet", t=0.5))
  p.export = ml_collections.ConfigDict(dict(model="merged", formats=("hf", "st")))
  p.ablation = ml_collections.ConfigDict(dict(stage="ablation_causal_last", reference="pair"))
  p.eval = ml_collections.ConfigDict(dict(
      models=("pretrain", "pair", "contextual", "triplet", "merged", "ablation_causal_last"),
      data="wordnet", split="validation", max_queries=1000, max_docs=-1,
      contextual_data="wordnet", contextual_max_docs=300,
      dtypes=("float32", "int8", "binary"), dims=(64, 128, 256, 512, -1), ks=(1, 10, 100),
      baselines=("bm25", "minilm"), mteb=True, parity_tolerance=1e-3, batch_size=64, max_length=512))
  return p


# The triplet stage at paper scale is the pair config with the triplet objective and hard-negative data (§4.3).
TRIPLET_OVERRIDES = ("--config.objective.kind=triplet", "--config.objective.use_qq=False",
                     "--config.objective.margin=-1.0", "--config.data.sources=('REQUIRED: triplet dataset dir',)",
                     "--config.data.phases=()")


def paper_scale(size: str, name: str, target: str) -> ml_collections.ConfigDict:
  """The pod pipeline of one Qwen3 size (`size` is the config-file suffix, `name` the Hugging Face name)."""
  p = base({"pretrain": f"configs/pretrain/qwen3_{size}.py:{target}", "pair": f"configs/contrastive/qwen3_{size}.py",
            "contextual": f"configs/contextual/qwen3_{size}.py", "triplet": f"configs/contrastive/qwen3_{size}.py"},
           pretrain_init=f"REQUIRED: the {name} Hugging Face folder", triplet_overrides=TRIPLET_OVERRIDES)
  p.tokenizer.path = f"REQUIRED: the {name} Hugging Face folder (tokenizer.json)"
  p.eval.data = "REQUIRED: a held-out pairs dataset (prepared with pplx-jax prepare)"
  p.eval.contextual_data = "REQUIRED: a held-out contextual dataset (ConTEB test sets prepared as documents)"
  p.eval.dims = (64, 128, 256, 512, -1)
  return p
