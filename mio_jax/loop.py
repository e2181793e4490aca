"""The one training loop: pretraining, `linear_eval` and `finetune` all train in it.

What differs between them is one `Training`, made by each one's set-up
(`pretraining.setup`, `supervised.setup`): the initial state, the jitted
step, the batches, the checkpoint folder and its resume record. The
compile check (`aot.programs`) lowers the very step a `Training` holds, on
its abstract arguments (`Training.lower`). What does not differ lives here
once:

  * resume: the latest checkpoint of the given `Checkpointer` is restored
    before the first batch is read, and batches start at its step (the
    batch of step i depends only on (seed, i)), so a resumed run is
    bit-identical to an uninterrupted one;
  * the non-finite guard: a NaN/inf loss, gradient norm or parameter stops
    the run naming the step, and a non-finite state is never saved;
  * logging every `log_every_steps` (with images/s) and hooks (the online
    kNN) after each step;
  * checkpoints every `checkpoint_every_steps` and at the end;
  * preemption: `PreemptionWatch`, one per process, opened by the command
    (experiment.py) and handed down: on SIGTERM the loop saves the current
    step and exits with status 0; work outside the loop (evaluations) runs
    inside `preemption.interruptible()` and is abandoned within seconds.
"""
import contextlib
import dataclasses
import os
import signal
import threading
import time
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from mio_jax import checkpointing
from mio_jax import errors
from mio_jax import files
from mio_jax import mesh as mesh_lib
from mio_jax import metric_logging
from mio_jax import resume_guard

Metrics = Mapping[str, Any]
StepFn = Callable[[Any, Any], tuple[Any, Metrics]]
BatchesFn = Callable[[int], Iterator[Any]]
# hook(completed steps, state) -> metrics to log, or None.
Hook = Callable[[int, Any], Optional[dict[str, Any]]]
# after_step(completed steps, state) -> (state, metrics to log or None): a
# protocol's own bookkeeping between steps (early stopping's best head).
AfterStep = Callable[[int, Any], tuple[Any, Optional[dict[str, Any]]]]

# ---- the non-finite guard ---------------------------------------------------


class NonFiniteLossError(FloatingPointError):
  """The loss, gradient norm or updated parameters of a step were NaN/inf."""


def all_finite(tree: Any) -> jax.Array:
  """True (a scalar) when every leaf of `tree` is finite (inside a step)."""
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x))
                            for x in jax.tree.leaves(tree)]))


def check_finite(step: int, metrics: Metrics) -> None:
  """Raises NonFiniteLossError naming `step` unless the step stayed finite.

  metrics: a step's "loss", "grad_norm" and optional "params_finite" (1.0
  when every updated parameter is finite).
  """
  loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
  params_finite = float(metrics.get("params_finite", 1.0)) == 1.0
  if not (np.isfinite(loss) and np.isfinite(grad_norm) and params_finite):
    raise NonFiniteLossError(
        f"Non-finite training at step {step}: loss={loss}, "
        f"grad_norm={grad_norm}, updated parameters "
        f"{'finite' if params_finite else 'NOT finite'}. Training stopped; "
        "the last checkpoint (before this step) is kept. Lower the learning "
        "rate, raise the temperature, or set optimizer.grad_clip_norm.")


# ---- logging ------------------------------------------------------------------

# What the loop logs to: metric_logging.MetricLogger, or a test's list.
Logger = metric_logging.Logger


def print_once(message: str) -> None:
  """Prints on process 0 only (every process runs the same loop)."""
  if jax.process_index() == 0:
    print(message, flush=True)


# ---- preemption ----------------------------------------------------------------


class Preempted(Exception):
  """SIGTERM arrived while a long hook or an evaluation was running."""


class PreemptionWatch:
  """Tells the loop when to save and stop because the VM is being preempted.

  One process: a SIGTERM handler sets a flag, checked between steps; inside
  `interruptible()` (hooks, evaluations: minutes on ImageNet) it raises
  `Preempted` at once, so the current step is saved within seconds.
  Several processes: JAX's preemption sync point, so every host stops at
  the same step (hosts may receive SIGTERM at different steps, and saving
  is collective).
  """

  def __init__(self):
    self._received = False
    self._interruptible = False
    self._previous_handler = None

  def __enter__(self) -> "PreemptionWatch":
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
    if self._interruptible:
      self._interruptible = False
      raise Preempted()

  @contextlib.contextmanager
  def interruptible(self):
    """Code in this block is abandoned (Preempted) when SIGTERM arrives."""
    if self._received:
      raise Preempted()
    self._interruptible = True
    try:
      yield
    finally:
      self._interruptible = False

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._received


# ---- the loop -----------------------------------------------------------------


def check_config(config) -> None:
  """Raises errors.InvalidValueError for a bad loop setting (top-level keys)."""
  errors.check_positive("checkpoint_every_steps", config.checkpoint_every_steps)
  errors.check_positive("keep_checkpoints", config.keep_checkpoints)
  errors.check_positive("log_every_steps", config.log_every_steps)


@dataclasses.dataclass(frozen=True)
class Cadence:
  """How often the loop logs and saves (config.log_every_steps, ...)."""
  log_every_steps: int
  checkpoint_every_steps: int

  @classmethod
  def from_config(cls, config) -> "Cadence":
    return cls(int(config.log_every_steps), int(config.checkpoint_every_steps))


def _every(period: int, step: int) -> bool:
  return period > 0 and step % period == 0


def abstract(tree: Any, sharding) -> Any:
  """`tree`'s arrays (or shapes) as ShapeDtypeStructs carrying `sharding`."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


@dataclasses.dataclass(frozen=True, eq=False)
class Training:
  """What the loop trains, made once by a training's set-up.

  step(state, *constants, batch) -> (state, metrics): jitted, donating its
  state; metrics hold "loss", "grad_norm" and "params_finite" (the guard).
  init(*init_args): the state at step 0, replicated; init_args are the
  encoder's variables (arrays, or ShapeDtypeStructs for a compile-only
  set-up) or nothing. constants: the step's arguments between state and
  batch (a linear evaluation's frozen backbone). batch: the batch the
  pipeline yields, as sharded ShapeDtypeStructs. batches(start_step): the
  batches of steps start_step, start_step + 1, ... (None: compile only).
  folder: where `checkpoints/` goes; record: what its resume must keep
  (`resume_guard`). notes: JSON files written into folder once the resume
  is accepted (the fine-tuning subset). after_step / stop: as `train`.
  """
  name: str  # "" (pretraining) or the protocol: metrics "<name>_<metric>"
  mesh: Any
  step: Callable[..., tuple[Any, Metrics]]
  init: Callable[..., Any]
  init_args: tuple
  constants: tuple
  batch: Mapping[str, jax.ShapeDtypeStruct]
  num_steps: int
  images_per_step: int
  cadence: "Cadence"
  keep_checkpoints: int
  folder: Optional[str] = None
  record: Optional[resume_guard.Record] = None
  batches: Optional[BatchesFn] = None
  notes: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  after_step: Optional[AfterStep] = None
  stop: Optional[Callable[[Any], bool]] = None

  def initial_state(self) -> Any:
    return self.init(*self.init_args)

  def abstract_args(self) -> tuple:
    """(state, *constants, batch) as sharded ShapeDtypeStructs."""
    replicated = mesh_lib.replicated_sharding(self.mesh)
    state = jax.eval_shape(self.init, *self.init_args)
    return (abstract(state, replicated),
            *abstract(self.constants, replicated), self.batch)

  def lower(self) -> jax.stages.Lowered:
    """The step lowered on abstract arguments: what `train` runs, compiled
    for a check without allocating anything."""
    return self.step.lower(*self.abstract_args())


def train(training: Training, *, logger: Logger,
          preemption: Optional[PreemptionWatch] = None,
          hooks: Sequence[Hook] = ()) -> Any:
  """Trains `training` to its num_steps (resuming) and returns the state.

  Opens the checkpoints in training.folder, which refuses another run's
  (resume_guard.CheckpointMismatchError), then writes training.notes.
  preemption: the process's watch (None: one is opened for this call).
  Raises NonFiniteLossError (naming the step; the last good checkpoint is
  kept) and SystemExit(0) after saving when preempted.
  """
  if training.batches is None:
    raise ValueError("this Training was set up to be compiled only")
  step_fn = training.step
  if training.constants:
    constants = training.constants
    step_fn = lambda state, batch: training.step(state, *constants, batch)
  with checkpointing.Checkpointer(training.folder, record=training.record,
                                  keep=training.keep_checkpoints
                                 ) as checkpointer:
    if jax.process_index() == 0:
      for filename, content in training.notes.items():
        files.write_json(os.path.join(training.folder, filename), content)
    return _loop(training.initial_state(), step_fn, training.batches,
               num_steps=training.num_steps,
               images_per_step=training.images_per_step,
               checkpointer=checkpointer, cadence=training.cadence,
               logger=logger, preemption=preemption, hooks=hooks,
               name=training.name, after_step=training.after_step,
               stop=training.stop)


def _loop(state: Any, step_fn: StepFn, batches_fn: BatchesFn, *,
        num_steps: int, images_per_step: int,
        checkpointer: checkpointing.Checkpointer, cadence: Cadence,
        logger: Logger, preemption: Optional[PreemptionWatch] = None,
        hooks: Sequence[Hook] = (), name: str = "",
        after_step: Optional[AfterStep] = None,
        stop: Optional[Callable[[Any], bool]] = None) -> Any:
  """The loop of `train`: trains `state` (a pytree with an int `.step`) to
  `num_steps`, resuming from `checkpointer`.

  batches_fn(start_step): the batches of steps start_step, start_step + 1...
  name: "" for pretraining, else the protocol ("finetune"): metrics are
  logged as "<name>_<metric>". after_step: updates the state between steps
  (its metrics logged like the step's); stop(state): True ends the run
  early (early stopping), saving that step. It is asked on resume and after
  each after_step that reports metrics, never after every step: it may read
  the device (a wait for the step just dispatched).
  """
  what = name or "pretraining"
  if checkpointer.latest_step() is not None:
    state = checkpointer.restore(state)
    print_once(f"Resumed {what} from {checkpointer.directory} at step "
               f"{int(state.step)} of {num_steps}.")
  logger.start(name, num_steps)
  watch = (contextlib.nullcontext(preemption) if preemption is not None
           else PreemptionWatch())
  prefix = f"{name}_" if name else ""
  batches = batches_fn(int(state.step))
  # The finiteness check of step i runs after step i + 1 is dispatched, so
  # the host never stalls the device; steps that log or save (always the
  # last one) are checked at once, so a non-finite state is never saved.
  unchecked: Optional[tuple[int, Metrics]] = None
  # Throughput over the steps since the last log line; the first interval
  # includes compilation, and time spent in hooks (evaluations) is excluded.
  interval_start = (int(state.step), time.monotonic())
  # Asked once on resume too: the saved run may have stopped already.
  stopped = stop is not None and stop(state)
  if int(state.step) >= num_steps or stopped:
    print_once(f"{what.capitalize()} is finished (step {int(state.step)} "
               f"{'stopped early' if stopped else f'of {num_steps}'} is "
               f"saved in {checkpointer.directory}): nothing left to do.")
    return state
  with watch as preemption:
    for step in range(int(state.step), num_steps):
      if stopped:
        print_once(f"Stopped{' ' + name if name else ''} early at step {step}.")
        break
      state, metrics = step_fn(state, next(batches))
      if unchecked is not None:
        check_finite(*unchecked)
      unchecked = (step, metrics)
      done = step + 1  # logs and checkpoints are numbered by completed steps
      if after_step is not None:
        state, own_metrics = after_step(done, state)
        if own_metrics:
          logger.log(done, {prefix + k: v for k, v in own_metrics.items()})
          stopped = stop is not None and stop(state)
      ends = done == num_steps or stopped
      if _every(cadence.log_every_steps, done) or ends:
        if unchecked is not None:
          check_finite(*unchecked)
          unchecked = None
        values = {prefix + k: float(v)
                  for k, v in jax.device_get(metrics).items()}
        now = time.monotonic()
        values[prefix + "images_per_sec"] = (
            (done - interval_start[0]) * images_per_step
            / max(now - interval_start[1], 1e-9))
        interval_start = (done, now)
        logger.log(done, values)
      preempted = False
      try:
        with preemption.interruptible():
          for hook in hooks:
            hook_metrics = hook(done, state)
            if hook_metrics:
              logger.log(done, hook_metrics)
              interval_start = (done, time.monotonic())
      except Preempted:
        preempted = True
      # Checked after the hooks, which may be slow (online kNN), so that a
      # SIGTERM received meanwhile is acted on at once.
      preempted = preempted or preemption.reached(done)
      if (_every(cadence.checkpoint_every_steps, done) or ends or preempted):
        if unchecked is not None:
          check_finite(*unchecked)
          unchecked = None
        checkpointer.save(state)
      if preempted:
        checkpointer.wait()
        print_once(f"Preempted: saved{' ' + name if name else ''} step "
                   f"{done} in {checkpointer.directory}; exiting.")
        raise SystemExit(0)
  return state
