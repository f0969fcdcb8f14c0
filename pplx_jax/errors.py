"""Errors caused by the user's input (files, configs, paths): the CLI prints them in one line, without a traceback."""

from __future__ import annotations


def _user_errors() -> tuple[type[BaseException], ...]:
  from pplx_jax.checkpoint import CheckpointError
  from pplx_jax.config import ConfigError
  from pplx_jax.convert.hf import ConversionError
  from pplx_jax.embed import InputError
  return (CheckpointError, ConfigError, ConversionError, InputError, FileExistsError, FileNotFoundError)


USER_ERRORS = _user_errors()
