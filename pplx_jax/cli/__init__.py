"""`pplx-jax`: the command line. One module per command (its flags, its printing, its exit codes); nothing below
this package parses arguments or prints errors. `app.main` dispatches and turns user errors into one-line messages.
"""

from pplx_jax.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
