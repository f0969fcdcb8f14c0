"""`pplx-jax` command line: one subcommand per module of this package.

Every command module defines `HELP`, `add_args(parser)` and `run(args) -> exit code`, and may list `USER_ERRORS`:
exception types that, for that command, are the user's mistake (reported in one line, exit code 2) rather than a
bug (traceback). Command modules import only the standard library at the top; the heavy imports (JAX, torch) happen
inside `run`, so `--help` is instant and `pplx_jax.core.distributed` can probe a coordinator before JAX starts.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module of pplx_jax.cli, in the order `--help` lists them
COMMANDS = {
    "init": "init", "tokenizer": "tokenizer", "prepare": "prepare", "train": "train", "convert": "convert",
    "embed": "embed", "eval": "eval", "merge": "merge", "pipeline": "pipeline", "aot": "aot",
}


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="pplx-jax", description="pplx-embed training recipe in JAX/Flax")
  sub = p.add_subparsers(dest="command", required=True)
  for name, module in COMMANDS.items():
    cmd = importlib.import_module(f"pplx_jax.cli.{module}")
    s = sub.add_parser(name, help=cmd.HELP)
    cmd.add_args(s)
    s.set_defaults(fn=cmd.run, user_errors=getattr(cmd, "USER_ERRORS", ()))
  return p


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  # `--config.a.b=value` overrides are collected separately so argparse never sees them.
  overrides = [a for a in argv if a.startswith("--config.")]
  argv = [a for a in argv if not a.startswith("--config.")]
  args = build_parser().parse_args(argv)
  args.overrides = overrides
  from pplx_jax.core.errors import PREEMPTED_EXIT_CODE, USER_ERRORS, Preempted
  try:
    return int(args.fn(args) or 0)
  except Preempted as e:
    print(f"preempted: {e}", file=sys.stderr, flush=True)
    return PREEMPTED_EXIT_CODE
  except USER_ERRORS + tuple(args.user_errors) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
