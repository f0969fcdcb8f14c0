"""Errors caused by the user's input (files, configs, paths, arguments).

Every such error derives from `UserError`; the CLI (`pplx_jax.cli.app`) prints it in one line, without a traceback,
and exits with code 2. Library code raises them and never prints.
"""

from __future__ import annotations


class UserError(ValueError):
  """Bad input the user can fix: the message names the file, line, key or tensor."""


# What `pplx-jax` reports as one line: our errors and the file system's "no such file" / "already exists".
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, FileExistsError, FileNotFoundError)
