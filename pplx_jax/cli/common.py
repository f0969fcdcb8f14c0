"""Flags shared by the commands that run on every process of a pod (`train`, `pipeline`)."""

from __future__ import annotations

import sys


def add_distributed_args(p) -> None:
  """The multi-process flags (each defaults to its environment variable)."""
  from pplx_jax.core.distributed import (
    DEFAULT_TIMEOUT_S,
    ENV_COORDINATOR,
    ENV_LOCAL_DEVICES,
    ENV_NUM_PROCESSES,
    ENV_PROCESS_ID,
    ENV_TIMEOUT,
  )
  g = p.add_argument_group("multi-process (default: the PPLX_* environment variables, else the cluster's own)")
  g.add_argument("--coordinator-address", default=None, metavar="HOST:PORT",
                 help=f"process 0's address, served by process 0 ({ENV_COORDINATOR})")
  g.add_argument("--num-processes", type=int, default=None, help=f"processes in the run ({ENV_NUM_PROCESSES})")
  g.add_argument("--process-id", type=int, default=None, help=f"this process, 0..N-1 ({ENV_PROCESS_ID})")
  g.add_argument("--local-devices", type=int, default=None,
                 help=f"CPU only: devices per process, for local multi-process runs ({ENV_LOCAL_DEVICES})")
  g.add_argument("--init-timeout", type=float, default=None,
                 help=f"seconds to wait for the coordinator and the other processes ({ENV_TIMEOUT}, "
                      f"default {DEFAULT_TIMEOUT_S})")


def initialize_distributed(args) -> str:
  """jax.distributed from the flags / environment, before anything starts a JAX backend."""
  from pplx_jax.core.distributed import DistributedError, initialize, settings
  try:
    return initialize(settings(args.coordinator_address, args.num_processes, args.process_id, args.local_devices,
                               args.init_timeout))
  except DistributedError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None
