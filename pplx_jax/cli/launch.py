"""Start `pplx-jax train` on several processes: local CPU processes, Cloud TPU VM pods, xpk/GKE, SLURM.

    python launch/local.py  --processes 2 --devices 4 -- --config configs/pretrain/tiny.py --workdir runs/x
    python launch/tpu_vm.py create|setup|run|logs|stop|delete --name pod --zone us-east5-a --accelerator-type v5p-64 ...
    python launch/xpk.py    create|logs|delete --cluster c --workload w --tpu-type v5p-128 ... -- <train args>
    python launch/slurm.py  --nodes 4 --gpus-per-node 8 -- --config ... --workdir /shared/runs/x

Everything after `--` is passed to `pplx-jax train`. Every launcher builds its commands first and, under
`--dry-run`, prints exactly those (one per line, shell-quoted) and runs nothing. See launch/README.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

from pplx_jax.core import distributed as dist

Command = list[str]


def quote(cmd: Sequence[str]) -> str:
  return " ".join(shlex.quote(str(c)) for c in cmd)


def _split_train_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  argv = list(argv)
  if "--" in argv:
    i = argv.index("--")
    return argv[:i], argv[i + 1:]
  return argv, []


def _need_train_args(train_args: Sequence[str], what: str) -> None:
  if "--config" not in train_args or "--workdir" not in train_args:
    raise SystemExit(f"error: {what} needs the `pplx-jax train` arguments after `--`, at least --config and "
                     f"--workdir (got {quote(train_args) or 'nothing'})")


# ---------------------------------------------------------------------------------------------------------------
# Local: N CPU processes on loopback, K devices each


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def local_commands(processes: int, devices: int, port: int, train_args: Sequence[str],
                   python: str = sys.executable, timeout_s: float | None = None) -> list[tuple[dict, Command]]:
  """[(extra environment, argv)] for each process."""
  env = {"JAX_PLATFORMS": "cpu"}
  flags = os.environ.get("XLA_FLAGS", "").split()
  if any(f.startswith("--xla_force_host_platform_device_count") for f in flags):
    # --local-devices sets the device count; a forced count in XLA_FLAGS (e.g. a test session's) would override it.
    env["XLA_FLAGS"] = " ".join(f for f in flags if not f.startswith("--xla_force_host_platform_device_count"))
  cmds = []
  for i in range(processes):
    cmd = [python, "-m", "pplx_jax.cli", "train", *train_args, "--coordinator-address", f"127.0.0.1:{port}",
           "--num-processes", str(processes), "--process-id", str(i), "--local-devices", str(devices)]
    if timeout_s is not None:
      cmd += ["--init-timeout", f"{timeout_s:g}"]
    cmds.append((dict(env), cmd))
  return cmds


def _child_env(extra: dict) -> dict:
  env = dict(os.environ, **extra)
  for var in (dist.ENV_COORDINATOR, dist.ENV_NUM_PROCESSES, dist.ENV_PROCESS_ID, dist.ENV_LOCAL_DEVICES):
    env.pop(var, None)  # the flags say it all; a stale variable must not half-configure a child
  return env


def run_local(cmds: list[tuple[dict, Command]], log_dir: Path | None = None, poll_s: float = 0.2,
              preempt_grace_s: float = 300.0) -> int:
  """Start every process, wait for all; if one fails, stop the others (SIGTERM, then SIGKILL) and return its code.

  SIGTERM / SIGINT sent to the launcher go to every process (they agree on a step, save it and exit with
  PREEMPTED_EXIT_CODE); a process that exits with that code gives the others `preempt_grace_s` to finish their
  part of the same checkpoint before they are stopped, and the launcher returns that code too."""
  from pplx_jax.core.errors import PREEMPTED_EXIT_CODE

  procs, files = [], []
  forwarded = {}

  def forward(signum, frame):
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signum)

  if threading.current_thread() is threading.main_thread():
    for sig in (signal.SIGTERM, signal.SIGINT):
      forwarded[sig] = signal.signal(sig, forward)
  try:
    for i, (extra, cmd) in enumerate(cmds):
      out = None
      if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        out = open(log_dir / f"process_{i}.log", "w")
        files.append(out)
      procs.append(subprocess.Popen(cmd, env=_child_env(extra), stdout=out, stderr=subprocess.STDOUT if out else None,
                                    start_new_session=True))
    while True:
      codes = [p.poll() for p in procs]
      failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
      if failed:
        i, code = failed[0]
        if code == PREEMPTED_EXIT_CODE:
          print(f"[launch] process {i} was preempted (exit code {code}); waiting for the others", file=sys.stderr,
                flush=True)
          _wait_all(procs, preempt_grace_s)
          return code
        print(f"[launch] process {i} exited with code {code}; stopping the others", file=sys.stderr, flush=True)
        return code
      if all(c == 0 for c in codes):
        return 0
      time.sleep(poll_s)
  finally:
    _stop(procs)
    for sig, old in forwarded.items():
      signal.signal(sig, old)
    for f in files:
      f.close()


def _wait_all(procs: list[subprocess.Popen], timeout_s: float) -> None:
  deadline = time.monotonic() + timeout_s
  for p in procs:
    try:
      p.wait(timeout=max(deadline - time.monotonic(), 0.01))
    except subprocess.TimeoutExpired:
      return


def _stop(procs: list[subprocess.Popen], grace_s: float = 5.0) -> None:
  for p in procs:
    if p.poll() is None:
      os.killpg(p.pid, signal.SIGTERM)
  deadline = time.monotonic() + grace_s
  for p in procs:
    try:
      p.wait(timeout=max(deadline - time.monotonic(), 0.01))
    except subprocess.TimeoutExpired:
      os.killpg(p.pid, signal.SIGKILL)
      p.wait()


def main_local(argv: Sequence[str]) -> int:
  own, train_args = _split_train_args(argv)
  p = argparse.ArgumentParser(prog="launch/local.py", description="N CPU processes on loopback running pplx-jax "
                              "train with real jax.distributed (gloo collectives); args after -- go to train")
  p.add_argument("--processes", type=int, default=2)
  p.add_argument("--devices", type=int, default=4, help="CPU devices per process")
  p.add_argument("--port", type=int, default=0, help="coordinator port on 127.0.0.1 (default: a free one)")
  p.add_argument("--init-timeout", type=float, default=None, help="seconds to wait for the coordinator")
  p.add_argument("--log-dir", type=Path, default=None, help="process_<i>.log per process (default: this terminal)")
  p.add_argument("--dry-run", action="store_true")
  a = p.parse_args(own)
  _need_train_args(train_args, "launch/local.py")
  if a.processes < 1 or a.devices < 1:
    raise SystemExit(f"error: --processes and --devices must be positive, got {a.processes} and {a.devices}")
  cmds = local_commands(a.processes, a.devices, a.port or free_port(), train_args, timeout_s=a.init_timeout)
  if a.dry_run:
    for extra, cmd in cmds:
      print(" ".join(f"{k}={shlex.quote(v)}" for k, v in extra.items()) + " " + quote(cmd) + " &")
    print("wait")
    return 0
  return run_local(cmds, a.log_dir)


# ---------------------------------------------------------------------------------------------------------------
# Cloud TPU VM pods (gcloud compute tpus tpu-vm ...)

TPU_LOG = "~/pplx-jax-train.log"
TPU_PID = "~/pplx-jax-train.pid"
TPU_DIR = "~/pplx-jax"


def tpu_vm_commands(action: str, a) -> list[Command]:
  base = ["gcloud", "compute", "tpus", "tpu-vm"]
  where = ["--zone", a.zone] + (["--project", a.project] if a.project else [])

  def ssh(command: str, worker: str = "all") -> Command:
    return base + ["ssh", a.name, *where, f"--worker={worker}", "--command", command]

  if action == "create":
    return [base + ["create", a.name, *where, "--accelerator-type", a.accelerator_type, "--version", a.version]
            + (["--spot"] if a.spot else [])]
  if action == "setup":
    if "://" in a.source or a.source.startswith("git@"):
      fetch = [ssh(f"rm -rf {TPU_DIR} && git clone --depth 1 --branch {shlex.quote(a.ref)} "
                   f"{shlex.quote(a.source)} {TPU_DIR}")]
    else:  # a local checkout: copy it to every worker
      fetch = [ssh(f"rm -rf {TPU_DIR}"),
               base + ["scp", "--recurse", str(a.source), f"{a.name}:{TPU_DIR}", *where, "--worker=all"]]
    pin = f"=={a.jax_version}" if a.jax_version else ""
    install = (f"cd {TPU_DIR} && python3 -m venv .venv && .venv/bin/pip install -q -U pip && "
               f'.venv/bin/pip install -q -e . "jax[tpu]{pin}"')
    return fetch + [ssh(install)]
  if action == "run":
    _need_train_args(a.train_args, "tpu_vm.py run")
    # Every worker runs the same command; JAX finds the pod's other hosts itself (pplx_jax.core.distributed: tpu-vm).
    train = (f"cd {TPU_DIR} && nohup .venv/bin/pplx-jax train {quote(a.train_args)} > {TPU_LOG} 2>&1 & "
             f"echo $! > {TPU_PID}")
    return [ssh(train)]
  if action == "logs":
    return [ssh(f"tail -n +1 -f {TPU_LOG}", worker=str(a.worker))]
  if action == "stop":
    return [ssh(f"kill $(cat {TPU_PID}) 2>/dev/null; rm -f {TPU_PID}")]
  if action == "delete":
    return [base + ["delete", a.name, *where, "--quiet"]]
  raise SystemExit(f"error: unknown action {action!r}")


def main_tpu_vm(argv: Sequence[str]) -> int:
  own, train_args = _split_train_args(argv)
  p = argparse.ArgumentParser(prog="launch/tpu_vm.py", description="Cloud TPU VM pod: create, set up, run "
                              "pplx-jax train on all workers, follow logs, stop, delete")
  p.add_argument("action", choices=("create", "setup", "run", "logs", "stop", "delete"))
  p.add_argument("--name", required=True)
  p.add_argument("--zone", required=True)
  p.add_argument("--project", default=None)
  p.add_argument("--accelerator-type", default="v5p-64", help="e.g. v5p-64, v5p-128, v6e-64 (create)")
  p.add_argument("--version", default="v2-alpha-tpuv5", help="TPU software version (create); v6e: v2-alpha-tpuv6e")
  p.add_argument("--spot", action="store_true", help="spot capacity (create)")
  p.add_argument("--source", default=".", help="git URL or local checkout to install on every worker (setup)")
  p.add_argument("--ref", default="main", help="branch or tag when --source is a git URL (setup)")
  p.add_argument("--jax-version", default=None, help="pin jax[tpu]==VERSION (setup; default: newest)")
  p.add_argument("--worker", default="0", help="whose log to follow (logs; process 0 prints the progress)")
  p.add_argument("--dry-run", action="store_true")
  a = p.parse_args(own)
  a.train_args = train_args
  return _run_all(tpu_vm_commands(a.action, a), a.dry_run)


# ---------------------------------------------------------------------------------------------------------------
# xpk (GKE TPU clusters)


def xpk_commands(action: str, a) -> list[Command]:
  where = ["--cluster", a.cluster] + (["--project", a.project] if a.project else []) + (
      ["--zone", a.zone] if a.zone else [])
  if action == "create":
    _need_train_args(a.train_args, "xpk.py create")
    cmd = ["xpk", "workload", "create", *where, "--workload", a.workload, "--tpu-type", a.tpu_type,
           "--num-slices", str(a.num_slices)]
    train = f"pplx-jax train {quote(a.train_args)}"
    if a.docker_image:  # an image with pplx-jax installed
      cmd += ["--docker-image", a.docker_image]
    else:  # xpk builds an image from this directory on top of the base image
      cmd += ["--base-docker-image", a.base_docker_image, "--script-dir", a.script_dir]
      train = "pip install -q -e . \"jax[tpu]\" && " + train
    return [cmd + ["--command", train]]
  if action == "logs":
    return [["kubectl", "logs", "-f", "--max-log-requests=1", "-l",
             f"jobset.sigs.k8s.io/jobset-name={a.workload},batch.kubernetes.io/job-completion-index=0"]]
  if action == "list":
    return [["xpk", "workload", "list", *where]]
  if action == "delete":
    return [["xpk", "workload", "delete", *where, "--workload", a.workload]]
  raise SystemExit(f"error: unknown action {action!r}")


def main_xpk(argv: Sequence[str]) -> int:
  own, train_args = _split_train_args(argv)
  p = argparse.ArgumentParser(prog="launch/xpk.py", description="xpk workload on a GKE TPU cluster running "
                              "pplx-jax train on every host (JAX reads the pod's environment)")
  p.add_argument("action", choices=("create", "logs", "list", "delete"))
  p.add_argument("--cluster", required=True)
  p.add_argument("--workload", default="pplx-jax")
  p.add_argument("--project", default=None)
  p.add_argument("--zone", default=None)
  p.add_argument("--tpu-type", default="v5p-128")
  p.add_argument("--num-slices", type=int, default=1)
  p.add_argument("--docker-image", default=None, help="an image with pplx-jax installed")
  p.add_argument("--base-docker-image", default="python:3.11-slim",
                 help="without --docker-image: xpk builds --script-dir on top of this")
  p.add_argument("--script-dir", default=".")
  p.add_argument("--dry-run", action="store_true")
  a = p.parse_args(own)
  a.train_args = train_args
  return _run_all(xpk_commands(a.action, a), a.dry_run)


# ---------------------------------------------------------------------------------------------------------------
# SLURM (multi-node GPUs)


def slurm_script(a) -> str:
  per_gpu = a.processes == "per-gpu"
  tasks = a.gpus_per_node if per_gpu else 1
  lines = ["#!/bin/bash", f"#SBATCH --job-name={a.job_name}", f"#SBATCH --nodes={a.nodes}",
           f"#SBATCH --ntasks-per-node={tasks}", f"#SBATCH --gpus-per-node={a.gpus_per_node}",
           f"#SBATCH --cpus-per-task={a.cpus_per_task}", f"#SBATCH --time={a.time}",
           f"#SBATCH --output={a.log_dir}/%x-%j.out", "#SBATCH --exclusive"]
  if a.partition:
    lines.append(f"#SBATCH --partition={a.partition}")
  if a.account:
    lines.append(f"#SBATCH --account={a.account}")
  lines += ["set -euo pipefail", f"cd {shlex.quote(str(a.repo))}"]
  if not per_gpu:  # JAX would give a one-task-per-node process only GPU 0 (its local task id)
    lines.append(f"export {dist.ENV_LOCAL_DEVICE_IDS}={','.join(str(i) for i in range(a.gpus_per_node))}")
  # Every task runs the same command; JAX reads SLURM_* for the coordinator (first node), process count and id.
  srun = ["srun", "--kill-on-bad-exit=1"] + (["--gpus-per-task=1"] if per_gpu else [])
  lines.append(quote(srun + [a.pplx_jax, "train", *a.train_args]))
  return "\n".join(lines) + "\n"


def main_slurm(argv: Sequence[str]) -> int:
  own, train_args = _split_train_args(argv)
  p = argparse.ArgumentParser(prog="launch/slurm.py", description="write an sbatch script running pplx-jax train "
                              "on every node (srun) and submit it")
  p.add_argument("--nodes", type=int, required=True)
  p.add_argument("--gpus-per-node", type=int, default=8)
  p.add_argument("--processes", choices=("per-node", "per-gpu"), default="per-node",
                 help="one process per node driving all its GPUs, or one per GPU")
  p.add_argument("--job-name", default="pplx-jax")
  p.add_argument("--partition", default=None)
  p.add_argument("--account", default=None)
  p.add_argument("--time", default="24:00:00")
  p.add_argument("--cpus-per-task", type=int, default=16)
  p.add_argument("--repo", type=Path, default=Path.cwd(), help="the checkout on the shared filesystem")
  p.add_argument("--pplx-jax", default=".venv/bin/pplx-jax", help="the pplx-jax executable, relative to --repo")
  p.add_argument("--log-dir", default="logs", help="sbatch output directory (relative to the submit directory)")
  p.add_argument("--script", type=Path, default=Path("pplx-jax.sbatch"), help="where to write the batch script")
  p.add_argument("--dry-run", action="store_true")
  a = p.parse_args(own)
  a.train_args = train_args
  _need_train_args(train_args, "launch/slurm.py")
  script = slurm_script(a)
  cmds = [["mkdir", "-p", a.log_dir], ["sbatch", str(a.script)]]
  if a.dry_run:
    print(f"cat > {shlex.quote(str(a.script))} <<'EOF'\n{script}EOF")
    for c in cmds:
      print(quote(c))
    return 0
  a.script.write_text(script)
  return _run_all(cmds, False)


# ---------------------------------------------------------------------------------------------------------------


def _run_all(cmds: list[Command], dry_run: bool) -> int:
  for c in cmds:
    print(quote(c), flush=True)
    if dry_run:
      continue
    rc = subprocess.call(c)
    if rc:
      print(f"[launch] failed with code {rc}: {quote(c)}", file=sys.stderr)
      return rc
  return 0


MAINS = {"local": main_local, "tpu_vm": main_tpu_vm, "xpk": main_xpk, "slurm": main_slurm}


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] not in MAINS:
    raise SystemExit(f"usage: python -m pplx_jax.cli.launch {{{','.join(MAINS)}}} ...")
  return MAINS[argv[0]](argv[1:])


if __name__ == "__main__":
  sys.exit(main())
