"""Pretraining, top to bottom: state, objective, update step, the run.

`pretrain(run, workdir)` guards and opens `<workdir>/checkpoints`, and
hands the state, the jitted update step and the batches to the one
training loop (`loop.run`: resume, non-finite guard, logging, hooks such
as the online kNN, checkpoints, SIGTERM).

The step runs unchanged on 1 CPU, 8 fake CPU devices or a TPU pod slice:
parameters and optimizer state are replicated, the batch is split over the
mesh's `data` axis, and XLA inserts the collectives (BatchNorm statistics,
the gradient all-reduce); the pair loss splits its anchors over the devices
itself (`losses.make_loss(..., mesh=)`). The old state is donated.
"""
import functools
from typing import Any, Callable, Mapping, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import optax

from mio_jax import checkpointing
from mio_jax import errors
from mio_jax import loop
from mio_jax import mesh as mesh_lib
from mio_jax import metric_logging
from mio_jax import models
from mio_jax.run import Run

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]

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


@functools.cache  # per Run (hashed by identity): compiled once per run
def _init_fn(run: Run) -> Callable[[], TrainState]:
  config = run.config

  def init() -> TrainState:
    variables = models.initial_variables(run.model, seed=config.seed,
                                         image_size=config.dataset.image_size)
    return TrainState(step=jnp.zeros((), jnp.int32),
                      params=variables["params"],
                      batch_stats=variables["batch_stats"],
                      opt_state=run.optimizer.init(variables["params"]),
                      rng=jax.random.key_data(models.initial_keys(config.seed)[1]),
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
        "params_finite": loop.all_finite(params).astype(jnp.float32),
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


# ---- the run ------------------------------------------------------------------


def check_config(config) -> None:
  """Raises errors.InvalidValueError for a bad pretraining setting."""
  errors.check_positive("online_eval_every_steps",
                        config.online_eval_every_steps, allow_zero=True)
  errors.check_one_of("bn_views", config.bn_views, BN_VIEWS)


def _default_batches(run: Run) -> loop.BatchesFn:
  # Imported lazily: tests and benchmarks run without TensorFlow data.
  from mio_jax import data  # pylint: disable=g-import-not-at-top
  return lambda start_step: data.pretrain_batches(run.config, run.mesh,
                                                  start_step=start_step)


def pretrain(run: Run, workdir: str, *,
             batches_fn: Optional[loop.BatchesFn] = None,
             logger: Optional[loop.Logger] = None,
             hooks: Sequence[loop.Hook] = (),
             preemption: Optional[loop.PreemptionWatch] = None) -> TrainState:
  """Pretrains (or resumes pretraining) and returns the final TrainState.

  batches_fn(start_step): the batches of steps start_step, start_step+1, ...
  (default: the data set's pipeline). The caller owns `logger` (and closes
  it). Raises loop.NonFiniteLossError (naming the step) on a NaN/inf loss,
  gradient norm or parameter, keeping the last good checkpoint; raises
  SystemExit(0) after saving when preempted (SIGTERM); raises
  CheckpointMismatchError when workdir holds checkpoints made with other
  settings (see checkpointing.check_resume).
  """
  config = run.config
  derived = dict(steps_per_epoch=run.steps_per_epoch,
                 prepared_dataset=run.prepared_dataset)
  allowed_changes = checkpointing.check_resume(
      workdir, config, total_steps=run.total_steps, **derived)
  with checkpointing.Checkpointer(
      workdir, keep=config.keep_checkpoints, allowed_changes=allowed_changes,
      settings=checkpointing.run_settings(config, **derived)) as checkpointer:
    return loop.run(
        init_state(run), make_train_step(run),
        _default_batches(run) if batches_fn is None else batches_fn,
        num_steps=run.total_steps, images_per_step=int(config.batch_size),
        checkpointer=checkpointer, cadence=loop.Cadence.from_config(config),
        logger=(metric_logging.PrintLogger(jax.process_index() == 0)
                if logger is None else logger),
        preemption=preemption, hooks=hooks)
