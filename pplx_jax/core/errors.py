"""Errors caused by the user's input (files, configs, paths, arguments).

Every such error derives from `UserError`; the CLI (`pplx_jax.cli.app`) prints it in one line, without a traceback,
and exits with code 2. Library code raises them and never prints.
"""

from __future__ import annotations


class UserError(ValueError):
  """Bad input the user can fix: the message names the file, line, key or tensor."""


# What `pplx-jax` reports as one line: our errors and the file system's "no such file" / "already exists".
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, FileExistsError, FileNotFoundError)


# `pplx-jax train` / `pipeline` exit with this code after a preemption signal (SIGTERM, SIGINT) once the checkpoint
# of the step every process agreed on is saved: "temporary failure, run the same command again" (BSD's EX_TEMPFAIL).
PREEMPTED_EXIT_CODE = 75


class Preempted(Exception):
  """Training stopped on a preemption signal after saving the step every process agreed on."""

  def __init__(self, step: int, checkpoint: str, signal_name: str):
    super().__init__(f"{signal_name}: saved the checkpoint of step {step} at {checkpoint}; run the same command "
                     f"again to resume (exit code {PREEMPTED_EXIT_CODE})")
    self.step = step
    self.checkpoint = checkpoint
