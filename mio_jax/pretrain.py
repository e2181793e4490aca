"""The pretraining loop: resume, train, log, checkpoint, stop cleanly.

`pretrain(config, workdir)` resumes from the latest checkpoint in
`<workdir>/checkpoints` (the batch of step i is `batches_fn(i)`'s first, so
data continue exactly where they stopped), runs the jitted train step up to
`train.total_steps(config, steps_per_epoch)`, saves every
`config.checkpoint_every_steps` (0: never periodically) and at the end, and on SIGTERM (a preempted
TPU VM) saves at the current step and exits with status 0.
"""
import signal
import threading
import time
from typing import Any, Callable, Iterator, Optional, Protocol, Sequence

import jax
import ml_collections
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from mio_jax import checkpointing
from mio_jax import mesh as mesh_lib
from mio_jax import train

BatchesFn = Callable[[int], Iterator[dict[str, jax.Array]]]
Hook = Callable[[int, train.TrainState], Optional[dict[str, Any]]]


class Logger(Protocol):

  def log(self, step: int, metrics: dict[str, float]) -> None:
    ...

  def close(self) -> None:
    ...


def _print_once(message: str) -> None:
  if jax.process_index() == 0:
    print(message, flush=True)


class PrintLogger:
  """The default logger: one line per log step on process 0."""

  def log(self, step: int, metrics: dict[str, float]) -> None:
    values = ", ".join(f"{k}={v:.5g}" for k, v in sorted(metrics.items()))
    _print_once(f"step {step}: {values}")

  def close(self) -> None:
    pass


class _PreemptionWatch:
  """Tells the loop when to save and stop because the VM is being preempted.

  One process: a SIGTERM handler sets a flag (checked between steps, never
  acting inside the handler). Several processes: JAX's preemption sync
  point, so every host stops at the same step (hosts may receive SIGTERM at
  different steps, and saving is collective).
  """

  def __init__(self):
    self._received = False
    self._previous_handler = None

  def __enter__(self) -> "_PreemptionWatch":
    if (jax.process_count() == 1
        and threading.current_thread() is threading.main_thread()):
      self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
    return self

  def __exit__(self, *exc_info) -> None:
    if self._previous_handler is not None:
      signal.signal(signal.SIGTERM, self._previous_handler)

  def _on_sigterm(self, signum, frame) -> None:
    del signum, frame
    self._received = True

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._received


def _default_data(config: ml_collections.ConfigDict, mesh: Mesh,
                  batches_fn: Optional[BatchesFn],
                  steps_per_epoch: Optional[int]) -> tuple[BatchesFn, int]:
  # Imported lazily: tests and benchmarks run without TensorFlow data.
  from mio_jax import data  # pylint: disable=g-import-not-at-top
  if steps_per_epoch is None:
    steps_per_epoch = data.pretrain_steps_per_epoch(config)
  if batches_fn is None:
    batches_fn = lambda start_step: data.pretrain_batches(
        config, mesh, start_step=start_step)
  return batches_fn, steps_per_epoch


def pretrain(config: ml_collections.ConfigDict, workdir: str, *,
             mesh: Optional[Mesh] = None,
             batches_fn: Optional[BatchesFn] = None,
             steps_per_epoch: Optional[int] = None,
             logger: Optional[Logger] = None,
             hooks: Sequence[Hook] = ()) -> train.TrainState:
  """Pretrains (or resumes pretraining) and returns the final TrainState.

  steps_per_epoch: default `data.pretrain_steps_per_epoch(config)`; it sets
  total_steps and the lr schedule, so a resumed run must use the same value.
  The caller owns `logger` (and closes it).
  Raises NonFiniteLossError (naming the step) on a NaN/inf loss or gradient
  norm, keeping the last good checkpoint; raises SystemExit(0) after saving
  when preempted (SIGTERM); raises CheckpointMismatchError when workdir holds
  checkpoints of another model, loss or optimizer.
  """
  mesh = mesh_lib.make_data_mesh() if mesh is None else mesh
  if batches_fn is None or steps_per_epoch is None:
    batches_fn, steps_per_epoch = _default_data(config, mesh, batches_fn,
                                                steps_per_epoch)
  num_steps = train.total_steps(config, steps_per_epoch)
  logger = PrintLogger() if logger is None else logger

  checkpointer = checkpointing.Checkpointer(workdir, config)
  state = train.create_train_state(config, mesh,
                                   steps_per_epoch=steps_per_epoch)
  if checkpointer.latest_step() is not None:
    state = checkpointer.restore(state)
    _print_once(f"Resumed from {checkpointer.directory} at step "
                f"{int(state.step)}.")
  train_step = train.make_train_step(config, mesh,
                                     steps_per_epoch=steps_per_epoch)
  try:
    with _PreemptionWatch() as preemption:
      state = _train_loop(config, state, train_step, batches_fn(int(state.step)),
                          num_steps=num_steps, checkpointer=checkpointer,
                          logger=logger, hooks=hooks, preemption=preemption)
  finally:
    checkpointer.close()  # waits for background saves, also on errors
  return state


def _train_loop(config: ml_collections.ConfigDict, state: train.TrainState,
                train_step: Callable[..., Any],
                batches: Iterator[dict[str, jax.Array]], *, num_steps: int,
                checkpointer: checkpointing.Checkpointer, logger: Logger,
                hooks: Sequence[Hook],
                preemption: _PreemptionWatch) -> train.TrainState:
  # The finiteness check of step i runs after step i + 1 is dispatched, so
  # the host never stalls the device; steps that log or save (always the
  # last one) are checked at once, so a non-finite state is never saved.
  unchecked: Optional[tuple[int, dict[str, jax.Array]]] = None
  every = lambda period, step: period > 0 and step % period == 0
  # Throughput over the steps since the last log line; the first interval
  # includes compilation, and time spent in hooks (evaluations) is excluded.
  interval_start = (int(state.step), time.monotonic())
  for step in range(int(state.step), num_steps):
    state, metrics = train_step(state, next(batches))
    if unchecked is not None:
      train.check_finite(*unchecked)
    unchecked = (step, metrics)
    done = step + 1  # logs and checkpoints are numbered by completed steps
    if every(config.log_every_steps, done) or done == num_steps:
      train.check_finite(*unchecked)
      unchecked = None
      values = {k: float(v) for k, v in jax.device_get(metrics).items()}
      now = time.monotonic()
      values["images_per_sec"] = ((done - interval_start[0]) * config.batch_size
                                  / max(now - interval_start[1], 1e-9))
      interval_start = (done, now)
      logger.log(done, values)
    for hook in hooks:
      hook_metrics = hook(done, state)
      if hook_metrics:
        logger.log(done, hook_metrics)
        interval_start = (done, time.monotonic())
    # Checked after the hooks, which may be slow (online kNN), so that a
    # SIGTERM received meanwhile is acted on at once.
    preempted = preemption.reached(done)
    if (every(config.checkpoint_every_steps, done) or done == num_steps
        or preempted):
      if unchecked is not None:
        train.check_finite(*unchecked)
        unchecked = None
      checkpointer.save(state)
    if preempted:
      checkpointer.wait()
      _print_once(f"Preempted: saved step {done} in {checkpointer.directory};"
                  " exiting.")
      raise SystemExit(0)
  return state
