"""Multi-process start-up: `jax.distributed.initialize` from flags, environment variables or the cluster.

One call, `initialize(...)`, before anything touches a JAX backend:

- explicit settings (flags of `pplx-jax train`, else the environment variables below) start a local multi-process
  run: process 0 hosts the coordinator at ``HOST:PORT``, the others connect to it;
- otherwise, inside a cluster JAX knows (a Cloud TPU VM, a GKE/xpk TPU pod, a SLURM job step with several tasks),
  JAX's own cluster detection fills everything in (``jax.distributed.initialize()`` with no arguments);
- otherwise (a laptop, a CI runner, one GPU box) nothing is initialised: one process with its local devices.

    PPLX_COORDINATOR=HOST:PORT  PPLX_NUM_PROCESSES=N  PPLX_PROCESS_ID=I  [PPLX_LOCAL_DEVICES=K]  [PPLX_INIT_TIMEOUT=S]

A process that cannot reach its coordinator fails within the timeout with a message naming the address: XLA's own
connection timeout aborts the interpreter (SIGABRT, a C++ stack trace) rather than raising, so the coordinator's
port is probed over TCP first.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from typing import Any, Mapping

ENV_COORDINATOR = "PPLX_COORDINATOR"
ENV_NUM_PROCESSES = "PPLX_NUM_PROCESSES"
ENV_PROCESS_ID = "PPLX_PROCESS_ID"
ENV_LOCAL_DEVICES = "PPLX_LOCAL_DEVICES"
ENV_TIMEOUT = "PPLX_INIT_TIMEOUT"
ENV_LOCAL_DEVICE_IDS = "PPLX_LOCAL_DEVICE_IDS"  # cluster runs: this process's accelerators, e.g. "0,1,2,3,4,5,6,7"
DEFAULT_TIMEOUT_S = 120


class DistributedError(RuntimeError):
  pass


@dataclasses.dataclass(frozen=True)
class Settings:
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  local_devices: int | None = None  # CPU only: fake devices per process (jax_num_cpu_devices)
  timeout_s: float = DEFAULT_TIMEOUT_S

  @property
  def explicit(self) -> bool:
    return any(v is not None for v in (self.coordinator_address, self.num_processes, self.process_id))


def settings(coordinator_address: str | None = None, num_processes: int | None = None,
             process_id: int | None = None, local_devices: int | None = None, timeout_s: float | None = None,
             env: Mapping[str, str] | None = None) -> Settings:
  """Arguments win over the PPLX_* environment variables; the message of a bad value names both."""
  env = os.environ if env is None else env

  def pick(value, var, kind, what):
    if value is not None:
      return value
    raw = env.get(var, "").strip()
    if not raw:
      return None
    try:
      return kind(raw)
    except ValueError:
      raise DistributedError(f"{var}={raw!r} is not a valid {what}") from None

  s = Settings(pick(coordinator_address, ENV_COORDINATOR, str, "HOST:PORT"),
               pick(num_processes, ENV_NUM_PROCESSES, int, "integer"),
               pick(process_id, ENV_PROCESS_ID, int, "integer"),
               pick(local_devices, ENV_LOCAL_DEVICES, int, "integer"),
               pick(timeout_s, ENV_TIMEOUT, float, "number of seconds") or DEFAULT_TIMEOUT_S)
  if s.explicit:
    missing = [f"--{flag} / {var}" for flag, var, v in (
        ("coordinator-address", ENV_COORDINATOR, s.coordinator_address),
        ("num-processes", ENV_NUM_PROCESSES, s.num_processes),
        ("process-id", ENV_PROCESS_ID, s.process_id)) if v is None]
    if missing:
      raise DistributedError("a multi-process run needs the coordinator address, the number of processes and this "
                             "process's id; missing: " + ", ".join(missing))
    _split_address(s.coordinator_address)
    if s.num_processes < 1 or not 0 <= s.process_id < s.num_processes:
      raise DistributedError(f"process id {s.process_id} is not in [0, {s.num_processes}) "
                             f"(--process-id / {ENV_PROCESS_ID}, --num-processes / {ENV_NUM_PROCESSES})")
  if s.local_devices is not None and s.local_devices < 1:
    raise DistributedError(f"local device count must be positive, got {s.local_devices} "
                           f"(--local-devices / {ENV_LOCAL_DEVICES})")
  if s.timeout_s <= 0:
    raise DistributedError(f"initialisation timeout must be positive, got {s.timeout_s} "
                           f"(--init-timeout / {ENV_TIMEOUT})")
  return s


def _split_address(address: str) -> tuple[str, int]:
  host, sep, port = address.rpartition(":")
  if not sep or not host or not port.isdigit():
    raise DistributedError(f"coordinator address {address!r} is not HOST:PORT (--coordinator-address / "
                           f"{ENV_COORDINATOR})")
  return host.strip("[]"), int(port)


def detect_cluster(env: Mapping[str, str] | None = None) -> str | None:
  """The multi-process cluster JAX can configure itself from, or None. Reads only environment variables and PCI
  devices (no metadata-server queries), so it is instant and safe on any machine."""
  env = os.environ if env is None else env
  if all(k in env for k in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")):
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1:
      return "slurm"
  if env.get("MEGASCALE_COORDINATOR_ADDRESS") or "," in env.get("TPU_WORKER_HOSTNAMES", ""):
    return "gke-tpu"
  if env.get("TPU_SKIP_MDS_QUERY") is None and _tpu_chips() > 0:
    return "tpu-vm"
  return None


def _tpu_chips() -> int:
  try:
    from jax._src import hardware_utils
    return int(hardware_utils.num_available_tpu_chips_and_device_id()[0])
  except Exception:  # a private helper: if it moves, treat the machine as not a TPU VM
    return 0


def probe(address: str, timeout_s: float, interval_s: float = 0.25) -> None:
  """Wait until something accepts TCP connections at `address` (process 0 may start a little later)."""
  host, port = _split_address(address)
  deadline = time.monotonic() + timeout_s
  last: OSError | None = None
  while True:
    left = deadline - time.monotonic()
    try:
      with socket.create_connection((host, port), timeout=max(min(left, 5.0), 0.05)):
        return
    except OSError as e:
      last = e
    if time.monotonic() + interval_s >= deadline:
      break
    time.sleep(interval_s)
  raise DistributedError(f"cannot reach the coordinator at {address} within {timeout_s:g} s ({last}); is process 0 "
                         f"running and is the address right? (--coordinator-address / {ENV_COORDINATOR})")


def initialize(s: Settings | None = None, log=print) -> str:
  """Initialise JAX for this process as `s` (default: from the environment) says; returns what it did."""
  s = settings() if s is None else s
  if s.explicit and s.process_id != 0:  # process 0 serves the coordinator itself; probe before the slow jax import
    probe(s.coordinator_address, s.timeout_s)
  import jax

  if s.local_devices is not None:
    jax.config.update("jax_num_cpu_devices", int(s.local_devices))
  if s.explicit:
    log(f"[distributed] process {s.process_id} of {s.num_processes}, coordinator {s.coordinator_address}")
    jax.distributed.initialize(coordinator_address=s.coordinator_address, num_processes=s.num_processes,
                               process_id=s.process_id, initialization_timeout=max(int(s.timeout_s), 1))
    return "explicit"
  cluster = detect_cluster()
  if cluster is None:
    return "single-process"
  log(f"[distributed] {cluster} environment: jax.distributed.initialize() with JAX's cluster detection")
  # JAX gives a SLURM task one GPU (its local task id) unless told otherwise: a one-task-per-node job lists them all.
  ids = os.environ.get(ENV_LOCAL_DEVICE_IDS, "").strip()
  local_ids = [int(i) for i in ids.split(",")] if ids else None
  jax.distributed.initialize(local_device_ids=local_ids, initialization_timeout=max(int(s.timeout_s), 1))
  return cluster


def allgather_json(obj: Any) -> list[Any]:
  """Every process's JSON-serialisable `obj`, in process order (a collective: every process must call it)."""
  import jax
  import numpy as np

  if jax.process_count() == 1:
    return [obj]
  from jax.experimental import multihost_utils
  data = np.frombuffer(json.dumps(obj, sort_keys=True).encode(), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.asarray([data.size], np.int32))).reshape(-1)
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:data.size] = data
  rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
  return [json.loads(bytes(rows[i, :int(n)]).decode()) for i, n in enumerate(sizes)]


def to_host(x):
  """A jax.Array as numpy in every process, also when it is sharded over other processes' devices (which
  `np.asarray` refuses): those are gathered (a collective, so every process must call it)."""
  import jax
  import numpy as np

  if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))
