"""`pplx-jax init`: a randomly initialised model checkpoint from a config (from-scratch work)."""

from __future__ import annotations

HELP = "create a randomly initialised model checkpoint from a config"


def add_args(p) -> None:
  p.add_argument("--config", required=True, help="a model config (configs/model/*.py) or a run config")
  p.add_argument("--tokenizer", required=True, help="tokenizer folder (tokenizer.json or tokenizer.model)")
  p.add_argument("--workdir", required=True, help="output workdir (must not exist or be empty)")
  p.add_argument("--seed", type=int, default=0)


def run(args) -> int:
  import ml_collections

  from pplx_jax.core import checkpoint as ckpt
  from pplx_jax.core import config as config_lib
  from pplx_jax.core.model_config import ModelConfig
  from pplx_jax.core.paths import staged_output
  from pplx_jax.core.tokenizers import load_tokenizer
  from pplx_jax.models import encoder

  cfg = config_lib.load_config(args.config, args.overrides)
  model_cfg = ModelConfig.from_dict(cfg.model if "model" in cfg else cfg)
  tok = load_tokenizer(args.tokenizer)
  if tok.vocab_size > model_cfg.vocab_size:
    raise config_lib.ConfigError(f"tokenizer {args.tokenizer} has {tok.vocab_size} ids but model.vocab_size is "
                                 f"{model_cfg.vocab_size}; set --config.vocab_size={tok.vocab_size} or larger")
  with staged_output(args.workdir) as tmp:
    model = encoder.create_model(model_cfg, seed=args.seed)
    ckpt.save(tmp, 0, ckpt.params_to_numpy(encoder.params_of(model)), model_cfg, extra={"init_seed": args.seed})
    tok.save(tmp / ckpt.TOKENIZER)
    config_lib.save_config(ml_collections.ConfigDict({"model": model_cfg.to_dict(), "seed": args.seed}), tmp)
  n = model_cfg.num_params()
  print(f"wrote {args.workdir}: {n / 1e6:.2f}M parameters, vocab {model_cfg.vocab_size}, "
        f"tokenizer {tok.kind} ({tok.vocab_size} ids)")
  return 0
