"""Pretraining, top to bottom: state, update step, guard, loop, checkpoints.

`pretrain(run, workdir)` resumes from the latest checkpoint in
`<workdir>/checkpoints` (the batch of step i is the first of
`batches_fn(i)`, so data continue exactly where they stopped), runs the
jitted update step up to `run.total_steps`, logs, runs hooks (online
evaluation), saves every `checkpoint_every_steps` and at the end, and on
SIGTERM (a preempted TPU VM) saves the current step and exits with status 0.

The step runs unchanged on 1 CPU, 8 fake CPU devices or a TPU pod slice:
parameters and optimizer state are replicated, the batch is split over the
mesh's `data` axis, and XLA inserts the collectives (BatchNorm statistics,
the gradient all-reduce); the pair loss splits its anchors over the devices
itself (`losses.make_loss(..., mesh=)`). The old state is donated.
"""
import contextlib
import functools
import signal
import threading
import time
from typing import Any, Callable, Iterator, Mapping, Optional, Protocol, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils

from mio_jax import checkpointing
from mio_jax import errors
from mio_jax import mesh as mesh_lib
from mio_jax import models
from mio_jax.run import Run

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]
BatchesFn = Callable[[int], Iterator[Batch]]

# ---- state --------------------------------------------------------------------


@flax.struct.dataclass
class TrainState:
  """Everything that changes during pretraining (and is checkpointed)."""
  step: jax.Array  # int32 scalar: number of updates applied so far
  params: Any
  batch_stats: Any  # BatchNorm running averages
  opt_state: Any
  rng: jax.Array  # uint32 key data (jax.random.key_data), checkpointable as is
  # The online linear probe: {"params": {"kernel", "bias"}, "opt_state"},
  # or None without one.
  probe: Any = None

  @property
  def variables(self) -> dict[str, Any]:
    """What the encoder needs to run: {"params", "batch_stats"}."""
    return {"params": self.params, "batch_stats": self.batch_stats}


def initial_keys(seed: int) -> tuple[jax.Array, jax.Array]:
  """(parameter key, state key) of a run seeded by `seed`."""
  params_key, state_key = jax.random.split(jax.random.key(seed))
  return params_key, state_key


def initial_variables(model: models.Encoder, *, seed: int,
                      image_size: int) -> dict[str, Any]:
  """The encoder variables a run seeded by `seed` starts from.

  Also the random-init baseline of the demo and the loss comparison.
  """
  return models.init_variables(model, initial_keys(seed)[0],
                               image_size=image_size)


@functools.cache  # per Run (hashed by identity): compiled once per run
def _init_fn(run: Run) -> Callable[[], TrainState]:
  config = run.config

  def init() -> TrainState:
    variables = initial_variables(run.model, seed=config.seed,
                                  image_size=config.dataset.image_size)
    return TrainState(step=jnp.zeros((), jnp.int32),
                      params=variables["params"],
                      batch_stats=variables["batch_stats"],
                      opt_state=run.optimizer.init(variables["params"]),
                      rng=jax.random.key_data(initial_keys(config.seed)[1]),
                      probe=_init_probe(run))

  return jax.jit(init, out_shardings=mesh_lib.replicated_sharding(run.mesh))


def _init_probe(run: Run) -> Optional[dict[str, Any]]:
  if run.probe_optimizer is None:
    return None
  dim = run.model.backbone.feature_dim
  # Zeros: the probe starts at chance, and no key is drawn from the run's
  # stream, so the encoder is the same with and without it.
  params = {"kernel": jnp.zeros((dim, run.num_classes)),
            "bias": jnp.zeros((run.num_classes,))}
  return {"params": params, "opt_state": run.probe_optimizer.init(params)}


def init_state(run: Run) -> TrainState:
  """A freshly initialised state (seeded by config.seed), replicated."""
  return _init_fn(run)()


# ---- objective and update step ----------------------------------------------


BN_VIEWS = ("joint", "per_view")


def training_objective(model: models.Encoder, params: Any, batch_stats: Any,
                       batch: Batch, loss_fn: Callable[[jax.Array, jax.Array],
                                                       jax.Array], *,
                       bn_views: str = "joint",
                       rng: Optional[jax.Array] = None
                      ) -> tuple[jax.Array, tuple[Any, jax.Array, jax.Array]]:
  """The pretraining loss of `params` on `batch`, as the update step has it.

  Returns (loss, (new_batch_stats, u1, u2, features)): the BatchNorm running
  averages after this batch (train mode), the (B, d) projections of each
  view and the (2B, D) backbone features of view 1 then view 2.
  The update step differentiates this; the Hessian analysis
  (`mio_jax.analysis.hessian`) takes its second derivatives.

  bn_views "joint": one forward pass over both views, so BatchNorm
  normalises over both views of the global batch (SimCLR). The views are
  interleaved (rows 2i, 2i+1 are the views of image i) so every device keeps
  its own images: stacking on a new axis 1 and merging it into the sharded
  batch axis moves no data, unlike concatenating the two sharded batches.
  "per_view": one forward pass per view, each normalised over its own view
  and updating the running averages in turn, as the public MIO code's two
  calls of the PyTorch model do.
  """
  view1, view2 = batch["view1"], batch["view2"]
  num_images = view1.shape[0]
  rngs = {} if rng is None else {"dropout": rng}

  def forward(images, stats):
    (features, projections), new_vars = model.apply(
        {"params": params, "batch_stats": stats}, images, train=True,
        mutable=["batch_stats"], rngs=rngs)
    return features, projections, new_vars["batch_stats"]

  if bn_views == "per_view":
    f1, u1, batch_stats = forward(view1, batch_stats)
    f2, u2, batch_stats = forward(view2, batch_stats)
  else:
    images = jnp.stack([view1, view2], axis=1).reshape(
        (2 * num_images,) + view1.shape[1:])
    features, projections, batch_stats = forward(images, batch_stats)
    features = features.reshape(num_images, 2, -1)
    projections = projections.reshape(num_images, 2, -1)
    f1, f2 = features[:, 0], features[:, 1]
    u1, u2 = projections[:, 0], projections[:, 1]
  features = jnp.concatenate([f1, f2])
  return loss_fn(u1, u2), (batch_stats, u1, u2, features)


def all_finite(tree: Any) -> jax.Array:
  """True (a scalar) when every leaf of `tree` is finite."""
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x))
                            for x in jax.tree.leaves(tree)]))


@functools.cache  # per Run (hashed by identity): compiled once per run
def make_train_step(run: Run
                   ) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """The jitted update step; the input state is donated (do not reuse it).

  batch: {"view1", "view2": f32 (B, H, W, 3), "label": int32 (B,)}, sharded
  over `data`. Metrics (replicated scalars): loss, grad_norm, learning_rate,
  params_finite (1.0 when every updated parameter is finite) and the pair
  metrics of `losses.pair_metrics`.
  """

  def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    if run.augment_fn is not None:
      batch = run.augment_fn(batch, state.step)
    # The per-step key goes to any stochastic layer (the ResNet has none);
    # derived from (state key, step) it is the same after a resume.
    step_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng),
                                  state.step)
    (loss, (batch_stats, u1, u2, features)), grads = jax.value_and_grad(
        lambda params: training_objective(
            run.model, params, state.batch_stats, batch, run.loss_fn,
            bn_views=run.config.bn_views, rng=step_rng),
        has_aux=True)(state.params)
    updates, opt_state = run.optimizer.update(grads, state.opt_state,
                                              state.params)
    params = optax.apply_updates(state.params, updates)
    probe, probe_metrics = _probe_update(
        run, state.probe, jax.lax.stop_gradient(features),
        jnp.concatenate([batch["label"], batch["label"]]))
    new_state = state.replace(step=state.step + 1, params=params,
                              batch_stats=batch_stats, opt_state=opt_state,
                              probe=probe)
    metrics = {
        **probe_metrics,
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
        "learning_rate": run.schedule(state.step),
        "params_finite": all_finite(params).astype(jnp.float32),
        **run.pair_metrics_fn(u1, u2),
    }
    return new_state, metrics

  replicated = mesh_lib.replicated_sharding(run.mesh)
  return jax.jit(train_step,
                 in_shardings=(replicated, mesh_lib.batch_sharding(run.mesh)),
                 out_shardings=(replicated, replicated), donate_argnums=(0,))


def _probe_update(run: Run, probe: Optional[dict[str, Any]],
                  features: jax.Array, labels: jax.Array
                 ) -> tuple[Optional[dict[str, Any]], Metrics]:
  """One SGD step of the online linear probe on the labelled rows.

  features: (2B, D) stop-gradient backbone features; labels: (2B,) int,
  negative for unlabelled rows (STL-10's unlabelled split), which are
  masked out. Returns the new probe and its loss and top-1 on this batch
  (before the update).
  """
  if probe is None:
    return None, {}
  labelled = labels >= 0
  count = jnp.maximum(jnp.sum(labelled), 1)

  def probe_loss(params):
    logits = features @ params["kernel"] + params["bias"]
    per_row = optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.maximum(labels, 0))
    return jnp.sum(jnp.where(labelled, per_row, 0.0)) / count, logits

  (loss, logits), grads = jax.value_and_grad(probe_loss, has_aux=True)(
      probe["params"])
  updates, opt_state = run.probe_optimizer.update(grads, probe["opt_state"],
                                                  probe["params"])
  hits = jnp.where(labelled, jnp.argmax(logits, axis=1) == labels, False)
  return ({"params": optax.apply_updates(probe["params"], updates),
           "opt_state": opt_state},
          {"online_probe_loss": loss,
           "online_probe_top1": jnp.sum(hits) / count})


# ---- the non-finite guard ---------------------------------------------------


class NonFiniteLossError(FloatingPointError):
  """The loss, gradient norm or updated parameters of a step were NaN/inf."""


def check_finite(step: int, metrics: Mapping[str, Any]) -> None:
  """Raises NonFiniteLossError naming `step` unless the step stayed finite."""
  loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
  params_finite = float(metrics.get("params_finite", 1.0)) == 1.0
  if not (np.isfinite(loss) and np.isfinite(grad_norm) and params_finite):
    raise NonFiniteLossError(
        f"Non-finite training at step {step}: loss={loss}, "
        f"grad_norm={grad_norm}, updated parameters "
        f"{'finite' if params_finite else 'NOT finite'}. Training stopped; "
        "the last checkpoint (before this step) is kept. Lower the learning "
        "rate, raise the temperature, or set optimizer.grad_clip_norm.")


# ---- the loop: logging, hooks, preemption -------------------------------------


def check_config(config) -> None:
  """Raises errors.InvalidValueError for a bad loop setting (top-level keys)."""
  errors.check_positive("checkpoint_every_steps", config.checkpoint_every_steps)
  errors.check_positive("keep_checkpoints", config.keep_checkpoints)
  errors.check_positive("log_every_steps", config.log_every_steps)
  errors.check_positive("online_eval_every_steps",
                        config.online_eval_every_steps, allow_zero=True)
  errors.check_one_of("bn_views", config.bn_views, BN_VIEWS)


Hook = Callable[[int, TrainState], Optional[dict[str, Any]]]


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


def _default_batches(run: Run) -> BatchesFn:
  # Imported lazily: tests and benchmarks run without TensorFlow data.
  from mio_jax import data  # pylint: disable=g-import-not-at-top
  return lambda start_step: data.pretrain_batches(run.config, run.mesh,
                                                  start_step=start_step)


def pretrain(run: Run, workdir: str, *,
             batches_fn: Optional[BatchesFn] = None,
             logger: Optional[Logger] = None,
             hooks: Sequence[Hook] = ()) -> TrainState:
  """Pretrains (or resumes pretraining) and returns the final TrainState.

  batches_fn(start_step): the batches of steps start_step, start_step+1, ...
  (default: the data set's pipeline). The caller owns `logger` (and closes
  it). Raises NonFiniteLossError (naming the step) on a NaN/inf loss,
  gradient norm or parameter, keeping the last good checkpoint; raises
  SystemExit(0) after saving when preempted (SIGTERM); raises
  CheckpointMismatchError when workdir holds checkpoints made with other
  settings (see checkpointing.check_resume).
  """
  config = run.config
  batches_fn = _default_batches(run) if batches_fn is None else batches_fn
  logger = PrintLogger() if logger is None else logger
  allowed_changes = checkpointing.check_resume(
      workdir, config, steps_per_epoch=run.steps_per_epoch,
      total_steps=run.total_steps)
  checkpointer = checkpointing.Checkpointer(
      workdir, keep=config.keep_checkpoints, allowed_changes=allowed_changes,
      settings=checkpointing.run_settings(
          config, steps_per_epoch=run.steps_per_epoch,
          total_steps=run.total_steps))
  state = init_state(run)
  if checkpointer.latest_step() is not None:
    state = checkpointer.restore(state)
    _print_once(f"Resumed from {checkpointer.directory} at step "
                f"{int(state.step)}.")
  try:
    with PreemptionWatch() as preemption:
      state = _train_loop(run, state, batches_fn(int(state.step)),
                          checkpointer=checkpointer, logger=logger,
                          hooks=hooks, preemption=preemption)
  finally:
    checkpointer.close()  # waits for background saves, also on errors
  return state


def _train_loop(run: Run, state: TrainState, batches: Iterator[Batch], *,
                checkpointer: checkpointing.Checkpointer, logger: Logger,
                hooks: Sequence[Hook],
                preemption: PreemptionWatch) -> TrainState:
  config, num_steps = run.config, run.total_steps
  train_step = make_train_step(run)
  # The finiteness check of step i runs after step i + 1 is dispatched, so
  # the host never stalls the device; steps that log or save (always the
  # last one) are checked at once, so a non-finite state is never saved.
  unchecked: Optional[tuple[int, Metrics]] = None
  every = lambda period, step: period > 0 and step % period == 0
  # Throughput over the steps since the last log line; the first interval
  # includes compilation, and time spent in hooks (evaluations) is excluded.
  interval_start = (int(state.step), time.monotonic())
  for step in range(int(state.step), num_steps):
    state, metrics = train_step(state, next(batches))
    if unchecked is not None:
      check_finite(*unchecked)
    unchecked = (step, metrics)
    done = step + 1  # logs and checkpoints are numbered by completed steps
    if every(config.log_every_steps, done) or done == num_steps:
      check_finite(*unchecked)
      unchecked = None
      values = {k: float(v) for k, v in jax.device_get(metrics).items()}
      now = time.monotonic()
      values["images_per_sec"] = ((done - interval_start[0]) * config.batch_size
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
    if (every(config.checkpoint_every_steps, done) or done == num_steps
        or preempted):
      if unchecked is not None:
        check_finite(*unchecked)
        unchecked = None
      checkpointer.save(state)
    if preempted:
      checkpointer.wait()
      _print_once(f"Preempted: saved step {done} in {checkpointer.directory};"
                  " exiting.")
      raise SystemExit(0)
  return state
