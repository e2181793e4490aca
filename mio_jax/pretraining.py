"""Pretraining, top to bottom: state, objective, update step, its set-up.

`setup(config, mesh, facts, workdir=...)` is the one place that turns a
config into what the loop trains (`loop.Training`): the initial state,
the jitted update step, the batches (the data pipeline's), the checkpoint
folder and its resume record. `main` trains it (`loop.train`: resume,
non-finite guard, logging, hooks such as the online kNN, checkpoints,
SIGTERM); the compile check and the benchmarks lower its very step
(`loop.Training.lower`).

The step runs unchanged on 1 CPU, 8 fake CPU devices or a TPU pod slice:
parameters and optimizer state are replicated, the batch is split over the
mesh's `data` axis, and XLA inserts the collectives (BatchNorm statistics,
the gradient all-reduce); the pair loss splits its anchors over the devices
itself (`losses.make_loss(..., mesh=)`). The old state is donated.
"""
import functools
from typing import Any, Callable, Mapping, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from mio_jax import errors
from mio_jax import loop
from mio_jax import mesh as mesh_lib
from mio_jax import models
from mio_jax import resume_guard
from mio_jax.recipe import DataFacts
from mio_jax.recipe import Recipe
from mio_jax.recipe import build_recipe

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
    """What the encoder needs to recipe: {"params", "batch_stats"}."""
    return {"params": self.params, "batch_stats": self.batch_stats}


@functools.cache  # per Recipe (hashed by identity): compiled once
def _init_fn(recipe: Recipe) -> Callable[[], TrainState]:

  def init() -> TrainState:
    variables = models.initial_variables(recipe.model, seed=recipe.seed,
                                         image_size=recipe.image_size)
    return TrainState(step=jnp.zeros((), jnp.int32),
                      params=variables["params"],
                      batch_stats=variables["batch_stats"],
                      opt_state=recipe.optimizer.init(variables["params"]),
                      rng=jax.random.key_data(models.initial_keys(recipe.seed)[1]),
                      probe=_init_probe(recipe))

  return jax.jit(init, out_shardings=mesh_lib.replicated_sharding(recipe.mesh))


def _init_probe(recipe: Recipe) -> Optional[dict[str, Any]]:
  if recipe.probe_optimizer is None:
    return None
  dim = recipe.model.backbone.feature_dim
  # Zeros: the probe starts at chance, and no key is drawn from the run's
  # stream, so the encoder is the same with and without it.
  params = {"kernel": jnp.zeros((dim, recipe.num_classes)),
            "bias": jnp.zeros((recipe.num_classes,))}
  return {"params": params, "opt_state": recipe.probe_optimizer.init(params)}


def init_state(recipe: Recipe) -> TrainState:
  """A freshly initialised state (seeded by the recipe's seed), replicated."""
  return _init_fn(recipe)()


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


@functools.cache  # per Recipe (hashed by identity): compiled once
def make_train_step(recipe: Recipe
                   ) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """The jitted update step; the input state is donated (do not reuse it).

  batch: {"view1", "view2": f32 (B, H, W, 3), "label": int32 (B,)}, sharded
  over `data`. Metrics (replicated scalars): loss, grad_norm, learning_rate,
  params_finite (1.0 when every updated parameter is finite) and the pair
  metrics of `losses.pair_metrics`.
  """

  def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    if recipe.augment_fn is not None:
      batch = recipe.augment_fn(batch, state.step)
    # The per-step key goes to any stochastic layer (the ResNet has none);
    # derived from (state key, step) it is the same after a resume.
    step_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng),
                                  state.step)
    (loss, (batch_stats, u1, u2, features)), grads = jax.value_and_grad(
        lambda params: training_objective(
            recipe.model, params, state.batch_stats, batch, recipe.loss_fn,
            bn_views=recipe.bn_views, rng=step_rng),
        has_aux=True)(state.params)
    updates, opt_state = recipe.optimizer.update(grads, state.opt_state,
                                              state.params)
    params = optax.apply_updates(state.params, updates)
    probe, probe_metrics = _probe_update(
        recipe, state.probe, jax.lax.stop_gradient(features),
        jnp.concatenate([batch["label"], batch["label"]]))
    new_state = state.replace(step=state.step + 1, params=params,
                              batch_stats=batch_stats, opt_state=opt_state,
                              probe=probe)
    metrics = {
        **probe_metrics,
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
        "learning_rate": recipe.schedule(state.step),
        "params_finite": loop.all_finite(params).astype(jnp.float32),
        **recipe.pair_metrics_fn(u1, u2),
    }
    return new_state, metrics

  replicated = mesh_lib.replicated_sharding(recipe.mesh)
  return jax.jit(train_step,
                 in_shardings=(replicated, mesh_lib.batch_sharding(recipe.mesh)),
                 out_shardings=(replicated, replicated), donate_argnums=(0,))


def _probe_update(recipe: Recipe, probe: Optional[dict[str, Any]],
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
  updates, opt_state = recipe.probe_optimizer.update(grads, probe["opt_state"],
                                                  probe["params"])
  hits = jnp.where(labelled, jnp.argmax(logits, axis=1) == labels, False)
  return ({"params": optax.apply_updates(probe["params"], updates),
           "opt_state": opt_state},
          {"online_probe_loss": loss,
           "online_probe_top1": jnp.sum(hits) / count})


# ---- the set-up ----------------------------------------------------------------


def check_config(config) -> None:
  """Raises errors.InvalidValueError for a bad pretraining setting."""
  errors.check_positive("online_eval_every_steps",
                        config.online_eval_every_steps, allow_zero=True)
  errors.check_one_of("bn_views", config.bn_views, BN_VIEWS)


def batch_spec(recipe: Recipe, *, on_device_colour: bool
              ) -> dict[str, jax.ShapeDtypeStruct]:
  """The batch the data pipeline yields (`data.pretrain_batches`), sharded:
  normalised float32 views, or uint8 crops when the colour ops run on the
  device, with each example's label and index in the split."""
  size, rows = recipe.image_size, recipe.batch_size
  views = jnp.uint8 if on_device_colour else jnp.float32
  sharding = mesh_lib.batch_sharding(recipe.mesh)
  image = jax.ShapeDtypeStruct((rows, size, size, 3), views, sharding=sharding)
  row = jax.ShapeDtypeStruct((rows,), jnp.int32, sharding=sharding)
  return {"view1": image, "view2": image, "label": row, "index": row}


@functools.lru_cache(maxsize=8)
def _recipe(config: ml_collections.FrozenConfigDict, mesh: Mesh,
            facts: DataFacts) -> Recipe:
  return build_recipe(config, mesh, facts)


def recipe_of(config: ml_collections.ConfigDict, mesh: Mesh,
              facts: DataFacts) -> Recipe:
  """`recipe.build_recipe`, one per (config values, mesh, facts): a config
  set up again (a resume, a test's second run) reuses its compiled step."""
  return _recipe(ml_collections.FrozenConfigDict(config), mesh, facts)


def setup(config: ml_collections.ConfigDict, mesh: Mesh, facts: DataFacts, *,
          workdir: Optional[str] = None,
          batches: Optional[loop.BatchesFn] = None) -> loop.Training:
  """What pretraining `config` on `mesh` trains: the one set-up.

  facts: the data set's size, classes, normalisation and identity
  (`recipe.DataFacts`). workdir: where the checkpoints go, with the record
  that guards their resume; None sets up the step to be compiled only
  (no batches). batches(start_step): the batches to train on (default:
  the data set's pipeline, `data.pretrain_batches`).
  Raises errors.InvalidValueError for a bad setting and
  CheckpointMismatchError for a bad config.resume_allow_changes.
  """
  recipe = recipe_of(config, mesh, facts)
  record = None
  if workdir is not None:
    record = resume_guard.pretraining_record(
        config, total_steps=recipe.total_steps,
        steps_per_epoch=recipe.steps_per_epoch, prepared_dataset=facts.identity)
    if batches is None:
      # Imported here: the data package loads TensorFlow, which a run on
      # synthetic batches (tests, benchmarks) does not need.
      from mio_jax import data  # pylint: disable=g-import-not-at-top
      batches = lambda start_step: data.pretrain_batches(
          config, mesh, start_step=start_step)
  return loop.Training(
      name="", mesh=mesh, step=make_train_step(recipe), init=_init_fn(recipe),
      init_args=(), constants=(),
      batch=batch_spec(recipe, on_device_colour=bool(config.augment.on_device)),
      num_steps=recipe.total_steps, images_per_step=recipe.batch_size,
      cadence=loop.Cadence.from_config(config),
      keep_checkpoints=int(config.keep_checkpoints), folder=workdir,
      record=record, batches=batches if workdir is not None else None)
