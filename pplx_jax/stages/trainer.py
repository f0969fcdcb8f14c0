"""The one trainer every stage uses: a Task supplies data, a loss and an evaluation; this file does the rest.

- validation of the config against the mesh before anything compiles;
- a model born sharded (random init, or imported from a checkpoint / Hugging Face folder via `train.init_from`);
- a train step jitted with explicit input/output shardings and buffer donation;
- orbax checkpoints (params, opt_state, data-iterator state, step) with automatic resume from the newest complete
  step whose checksums hold, so a killed run started again with the same command continues bit for bit;
- SIGTERM / SIGINT (preemption): every process agrees on one step, saves it and exits with code 75;
- metrics to JSONL + TensorBoard, a progress bar or log lines, tokens/s and MFU;
- a non-finite loss stops the run naming the step and the last good checkpoint, and is never saved.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx

from pplx_jax.convert import load as load_lib
from pplx_jax.core import checkpoint as ckpt
from pplx_jax.core import config as config_lib
from pplx_jax.core import paths
from pplx_jax.core import sharding as shd
from pplx_jax.core.errors import Preempted
from pplx_jax.core.model_config import ARCHITECTURE_FIELDS, ModelConfig
from pplx_jax.models import encoder
from pplx_jax.stages import flops as flops_lib
from pplx_jax.stages.metrics import MetricsWriter, Progress
from pplx_jax.stages.optimizer import global_norm, init_sharded, make_optimizer, state_shardings


class NonFiniteLossError(RuntimeError):
  pass


class DataIterator(Protocol):
  def __next__(self) -> dict[str, np.ndarray]: ...
  def get_state(self) -> Any: ...
  def set_state(self, state: Any) -> None: ...


class Task(Protocol):
  """What a stage provides to the trainer. A task may also define
  `loss_and_grad(graphdef, params, batch, rng) -> (loss, metrics, grads)` to compute gradients its own way
  (GradCache); otherwise the trainer differentiates `loss`."""

  def train_data(self, per_process_batch: int, shard_index: int, shard_count: int) -> DataIterator: ...

  def loss(self, model: encoder.Encoder, batch: Mapping[str, jax.Array], rng: jax.Array
           ) -> tuple[jax.Array, dict[str, jax.Array]]: ...

  def evaluate(self, model_fn: Callable[[], encoder.Encoder], step: int) -> dict[str, float]: ...

  def tokens_per_step(self, global_batch: int) -> int: ...

  def flops_per_step(self, model_cfg: ModelConfig, global_batch: int) -> float: ...


@dataclasses.dataclass
class TrainResult:
  step: int
  params: Any
  last_metrics: dict[str, float]
  workdir: Path


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def validate(cfg: ml_collections.ConfigDict, num_devices: int | None = None) -> tuple[ModelConfig, dict, tuple]:
  """Everything that can be checked without compiling: model fields, mesh sizes, sharding divisibility, batch."""
  model_cfg = config_lib.model_config(cfg)
  num_devices = num_devices or jax.device_count()
  mesh_shape = shd.resolve_mesh_shape(cfg.mesh, num_devices)
  rules = shd.rules_from_config(cfg.sharding.rules or None)
  gb = int(cfg.train.global_batch)
  chunks = int(cfg.get("objective", {}).get("gradcache_chunks", 1) or 1)
  shd.validate_layout(model_cfg, mesh_shape, rules, global_batch=gb, batch_chunks=chunks)
  if gb % jax.process_count():
    raise config_lib.ConfigError(f"train.global_batch={gb} is not divisible by the {jax.process_count()} processes")
  if int(cfg.train.steps) <= 0:
    raise config_lib.ConfigError(f"train.steps must be positive, got {cfg.train.steps}")
  return model_cfg, mesh_shape, rules


def _initial_model(cfg, model_cfg: ModelConfig, mesh, rules) -> tuple[encoder.Encoder, ModelConfig, Path | None]:
  init_from = str(cfg.train.init_from or "")
  if not init_from:
    return encoder.create_model(model_cfg, seed=int(cfg.train.seed)), model_cfg, None
  src = load_lib.resolve_model(init_from)
  if src.kind == "hf":
    from pplx_jax.convert import hf
    src_cfg = hf.folder_model_config(src.path)
  else:
    src_cfg, _ = ckpt.read_model_config(src.path)
  head = {}
  if not src_cfg.lm_head and model_cfg.tie_embeddings:
    # An encoder-only checkpoint has no LM head. Training it with a head (diffusion pretraining) ties the head to the
    # input embeddings: both map between token ids and the hidden space, and a tied head adds no parameters.
    _log(f"[train] {init_from} is encoder-only (no lm_head.weight): the LM head is tied to the input embeddings")
    head = {"tie_embeddings": True, "lm_head": True}
    src_cfg = src_cfg.replace(**head)
  mismatch = [f"{f}: config {getattr(model_cfg, f)} vs checkpoint {getattr(src_cfg, f)}" for f in ARCHITECTURE_FIELDS
              if getattr(model_cfg, f) != getattr(src_cfg, f)]
  if mismatch:
    hint = ("; an encoder-only checkpoint trains with a tied head (model.tie_embeddings=True) or none "
            "(model.lm_head=False)" if not src_cfg.lm_head else "")
    raise config_lib.ConfigError(f"train.init_from={init_from}: architecture differs from config.model:\n  "
                                 + "\n  ".join(mismatch) + hint)
  runtime = {k: getattr(model_cfg, k) for k in RUNTIME_FIELDS}
  model, loaded_cfg, _ = load_lib.load_model(init_from, mesh=mesh, rules=rules, **runtime, **head)
  return model, loaded_cfg, src.tokenizer_dir


class PreemptionWatch:
  """SIGTERM (what a preemptible TPU VM or a scheduler sends shortly before it takes the machine) and SIGINT set a
  flag; `agreed()` tells every process the same answer at the same step: a one-int all-gather of the flags, so one
  process's signal stops them all at one step, whose checkpoint they then save together. A second SIGINT
  interrupts at once (an impatient Ctrl-C). jax's `multihost_utils.reached_preemption_sync_point` needs the
  coordination service's own preemption notifier, which only TPU runtimes feed; the all-gather works everywhere."""

  SIGNALS = ("SIGTERM", "SIGINT")

  def __init__(self, every: int = 1):
    import signal
    import threading

    self.every = max(int(every), 1)
    self.received: str | None = None
    self._old = {}
    if threading.current_thread() is not threading.main_thread():
      return  # signal handlers live in the main thread; a run started elsewhere (a test thread) is not watched
    for name in self.SIGNALS:
      sig = getattr(signal, name)
      self._old[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    import signal
    name = signal.Signals(signum).name
    if self.received == "SIGINT" and name == "SIGINT":
      raise KeyboardInterrupt
    self.received = self.received or name
    print(f"[train] {name}: saving a checkpoint at the next step every process agrees on, then exiting", flush=True)

  def agreed(self, step: int) -> str | None:
    """The signal's name if any process received one (the same answer on every process), else None."""
    if step % self.every:
      return None
    if jax.process_count() == 1:
      return self.received
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.asarray(self.SIGNALS.index(self.received) + 1 if self.received
                                                         else 0, np.int32))
    hit = [int(f) for f in np.ravel(flags) if f]
    return self.SIGNALS[min(hit) - 1] if hit else None

  def close(self) -> None:
    import signal
    for sig, old in self._old.items():
      signal.signal(sig, old)
    self._old = {}


def _log(msg: str) -> None:
  print(msg, flush=True)


def _quiet(msg: str) -> None:
  pass


RUNTIME_FIELDS = ("attention", "attention_impl", "compute_dtype", "residual_dtype", "projection_dtype", "remat",
                  "scan_layers", "param_dtype")


def _resumed_model_config(step_dir: Path, model_cfg: ModelConfig) -> ModelConfig:
  """The model a checkpoint holds (its saved config, e.g. a head tied at init_from) run the way the current config
  says (attention kernel, remat, dtypes may change between a run and its resumption)."""
  saved, _ = ckpt.read_model_config(step_dir)
  mismatch = [f"{f}: config {getattr(model_cfg, f)} vs checkpoint {getattr(saved, f)}" for f in ARCHITECTURE_FIELDS
              if f not in ("tie_embeddings", "lm_head") and getattr(model_cfg, f) != getattr(saved, f)]
  if mismatch:
    raise config_lib.ConfigError(f"{step_dir}: the checkpoint to resume has another architecture than config.model:"
                                 "\n  " + "\n  ".join(mismatch))
  return saved.replace(**{k: getattr(model_cfg, k) for k in RUNTIME_FIELDS})


def _abstract_train_state(model_cfg: ModelConfig, tx: optax.GradientTransformation, mesh, rules):
  """(graphdef, params, opt_state) as ShapeDtypeStructs carrying the current mesh's shardings: a restore target."""
  graphdef, abstract_state = nnx.split(encoder.abstract_model(model_cfg))
  shardings = nnx.to_pure_dict(shd.param_shardings(abstract_state, mesh, rules))
  params = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                        nnx.to_pure_dict(abstract_state), shardings)
  opt_sh = state_shardings(tx, params)
  opt_state = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                           jax.eval_shape(tx.init, params), opt_sh)
  return graphdef, params, opt_state


def make_train_step(task: Task, graphdef, tx: optax.GradientTransformation, schedule: optax.Schedule, seed: int):
  """The stage's train step (params, opt_state, batch, step) -> (params, opt_state, metrics), shared by training and
  the AOT compile check (`pplx_jax.stages.aot`), so what is checked is what runs."""

  def train_step(params, opt_state, batch, step):
    rng = jax.random.fold_in(jax.random.key(seed), step)

    if hasattr(task, "loss_and_grad"):  # e.g. GradCache: chunked re-encoding computes the gradient itself
      loss, metrics, grads = task.loss_and_grad(graphdef, params, batch, rng)
    else:
      def loss_fn(p):
        return task.loss(nnx.merge(graphdef, nnx.State(p)), batch, rng)

      (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics = dict(metrics, loss=loss, grad_norm=global_norm(grads), lr=schedule(step))
    return params, opt_state, metrics

  return train_step


def jit_train_step(train_step, mesh, param_sh, opt_sh, batch_sh):
  """jit with explicit shardings; params and optimizer state are donated (updated in place)."""
  repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.jit(train_step, in_shardings=(param_sh, opt_sh, batch_sh, repl), out_shardings=(param_sh, opt_sh, repl),
                 donate_argnums=(0, 1))


def train(cfg: ml_collections.ConfigDict, workdir: str | Path, task_factory: Callable[..., Task],
          stop_after: int | None = None, devices=None) -> TrainResult:
  """Run (or resume) the stage described by `cfg` in `workdir`.

  `stop_after` ends after that many steps (tests, benchmarks); `devices` restricts the mesh to some devices.
  On SIGTERM / SIGINT every process saves the step they agree on and `Preempted` is raised (exit code 75).
  """
  watch = PreemptionWatch(int(cfg.train.get("preemption_check_every", 1) or 1))
  try:
    return _train(cfg, workdir, task_factory, stop_after, devices, watch)
  finally:
    watch.close()


def _train(cfg, workdir, task_factory, stop_after, devices, watch: PreemptionWatch) -> TrainResult:
  workdir = paths.absolute(workdir)
  devices = list(devices) if devices is not None else jax.devices()
  model_cfg, mesh_shape, rules = validate(cfg, len(devices))
  mesh = shd.make_mesh(mesh_shape, devices)
  total_steps = int(cfg.train.steps)
  is_main = jax.process_index() == 0
  workdir.mkdir(parents=True, exist_ok=True)
  if is_main:
    config_lib.save_config(cfg, workdir)

  with shd.activate(mesh, rules):
    tx, schedule = make_optimizer(cfg.optimizer, total_steps)
    mngr = ckpt.manager(workdir, max_to_keep=int(cfg.train.keep_checkpoints),
                        async_save=bool(cfg.train.async_checkpointing))
    latest = None
    if mngr.all_steps():
      latest = ckpt.newest_good_step(workdir, mngr.all_steps(), log=_log if is_main else _quiet)
      mngr.reload()  # quarantined steps are gone
    if latest is not None:
      # Resume: the model is born abstract and the checkpoint restores straight into it (no random init, no copy).
      model_cfg = _resumed_model_config(ckpt.step_dir(workdir, latest), model_cfg)
      graphdef, params, opt_state = _abstract_train_state(model_cfg, tx, mesh, rules)
      init_tok = None
    else:
      model, model_cfg, init_tok = _initial_model(cfg, model_cfg, mesh, rules)
      graphdef, state = nnx.split(model)
      params = nnx.to_pure_dict(state)
      del model, state
      opt_state = init_sharded(tx, params)
    tok_dir = workdir / ckpt.TOKENIZER
    src_tok = str(cfg.data.get("tokenizer", "") or "") or (str(init_tok) if init_tok else "")
    if is_main and not ckpt.has_tokenizer(tok_dir):
      if not src_tok:
        raise config_lib.ConfigError("no tokenizer: set data.tokenizer or start from a model that carries one")
      ckpt.copy_tokenizer(src_tok, tok_dir)
    task = task_factory(cfg, model_cfg, paths.cached_local_copy(tok_dir if ckpt.has_tokenizer(tok_dir) else src_tok))

    param_sh = jax.tree.map(lambda x: x.sharding, params)
    opt_sh = jax.tree.map(lambda x: x.sharding, opt_state)

    per_process = int(cfg.train.global_batch) // jax.process_count()
    data = task.train_data(per_process, jax.process_index(), jax.process_count())

    step = 0
    if latest is not None:
      restored = mngr.restore(latest, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(params), opt_state=ocp.args.StandardRestore(opt_state),
          data_iter=ocp.args.JsonRestore(), train=ocp.args.JsonRestore()))
      params, opt_state = restored.params, restored.opt_state
      data.set_state(restored.data_iter)
      step = int(restored.train["step"])
      _log(f"[train] resumed from {ckpt.step_dir(workdir, latest)} at step {step}")
    elif cfg.train.init_from:
      _log(f"[train] starting from {cfg.train.init_from}")

    train_step = make_train_step(task, graphdef, tx, schedule, int(cfg.train.seed))
    step_fn = None  # jitted at the first batch (its keys and ranks give the batch shardings)

    writer = MetricsWriter(workdir, enabled=is_main)
    progress = Progress(total_steps, step, int(cfg.train.log_every), enabled=is_main, desc=str(cfg.get("stage", "train")))
    tokens = task.tokens_per_step(int(cfg.train.global_batch))
    model_flops = task.flops_per_step(model_cfg, int(cfg.train.global_batch))
    peak = flops_lib.device_peak_flops()
    measured_peak = peak is None  # a CPU: its peak is measured, in the model's compute dtype
    if measured_peak:
      peak = flops_lib.measure_matmul_peak(dtype=shd.to_dtype(model_cfg.compute_dtype))
    peak_total = peak * len(devices)

    def model_fn():
      return nnx.merge(graphdef, nnx.State(params))

    pending = []  # saved steps whose checksums are not written yet (an async save commits in the background)

    def write_checksums():
      if pending:
        mngr.wait_until_finished()
        for s in pending:
          ckpt.write_checksums(workdir, s)
        pending.clear()
        writer.sync()  # a bucket workdir's metrics are mirrored once a checkpoint is committed

    def save(step_to_save):
      write_checksums()  # the previous save must be committed first anyway: orbax waits for it too
      mngr.save(step_to_save, args=ocp.args.Composite(
          params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
          model=ocp.args.JsonSave({"config": model_cfg.to_dict(), "extra": {"stage": str(cfg.get("stage", ""))}}),
          data_iter=ocp.args.JsonSave(data.get_state()), train=ocp.args.JsonSave({"step": step_to_save})))
      pending.append(step_to_save)
      if not cfg.train.async_checkpointing:
        write_checksums()

    last = {}
    preempted = None
    end = total_steps if stop_after is None else min(total_steps, step + int(stop_after))
    if step == 0 and int(cfg.train.eval_every) > 0:  # the starting point of every held-out curve
      ev = task.evaluate(model_fn, 0)
      if ev:
        writer.write(0, ev)
        if is_main:
          print("[eval] step 0: " + " ".join(f"{k}={v:.4g}" for k, v in ev.items()), flush=True)
    t_prev = None
    try:
      while step < end:
        if (sig := watch.agreed(step)) is not None:
          preempted = sig
          break
        local = next(data)
        if step_fn is None:
          batch_sh = {k: shd.batch_sharding(mesh, rules, np.ndim(v)) for k, v in local.items()}
          step_fn = jit_train_step(train_step, mesh, param_sh, opt_sh, batch_sh)
        batch = shd.host_local_to_global(local, mesh, rules)
        params, opt_state, metrics = step_fn(params, opt_state, batch, jnp.asarray(step, jnp.int32))
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        step += 1
        if not math.isfinite(metrics["loss"]):
          good = mngr.latest_step()
          where = (workdir / ckpt.CHECKPOINTS / str(good)) if good is not None else "none (no checkpoint yet)"
          raise NonFiniteLossError(f"non-finite loss {metrics['loss']} at step {step}; the last good checkpoint "
                                   f"is {where}; nothing was saved after it")
        now = time.perf_counter()
        if t_prev is not None:  # the first step includes compilation
          dt = now - t_prev
          if measured_peak and model_flops / dt > peak_total:
            # A step beat the measured peak: on a shared host the peak was measured while others held the cores.
            # Measure again now (the peak only rises) rather than report an MFU above 100%.
            peak = max(peak, flops_lib.measure_matmul_peak(dtype=shd.to_dtype(model_cfg.compute_dtype)))
            peak_total = peak * len(devices)
          metrics.update(step_time_s=dt, tokens_per_s=tokens / dt, mfu=model_flops / dt / peak_total,
                         peak_flops=peak_total)
        t_prev = now
        writer.write(step, metrics)
        progress.update(step, metrics)
        last = metrics
        if step % int(cfg.train.checkpoint_every) == 0 or step == total_steps:
          save(step)
        if int(cfg.train.eval_every) > 0 and (step % int(cfg.train.eval_every) == 0 or step == total_steps):
          ev = task.evaluate(model_fn, step)
          if ev:
            writer.write(step, ev)
            if is_main:
              print(f"[eval] step {step}: " + " ".join(f"{k}={v:.4g}" for k, v in ev.items()), flush=True)
          t_prev = None  # do not count evaluation time as a training step
      if preempted is not None and mngr.latest_step() != step:
        save(step)
      elif step == end and step % int(cfg.train.checkpoint_every) and step != total_steps:
        save(step)
    finally:
      mngr.wait_until_finished()
      write_checksums()
      mngr.close()
      progress.close()
      writer.close()
  if preempted is not None:
    raise Preempted(step, str(ckpt.step_dir(workdir, step)), preempted)
  return TrainResult(step=step, params=params, last_metrics=last, workdir=workdir)


def default_train_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      steps=1000, global_batch=8, seed=0, init_from="", log_every=10, eval_every=100, checkpoint_every=100,
      keep_checkpoints=3, async_checkpointing=True,
      preemption_check_every=1))  # steps between the processes' agreement on a preemption signal (one tiny all-gather)
