"""The training state and the sharded, jitted self-supervised update step.

One pure function `train_step(state, batch) -> (state, metrics)` runs
unchanged on 1 CPU, 8 fake CPU devices or a TPU pod slice: parameters and
optimizer state are replicated, the batch is split over the mesh's `data`
axis, and XLA inserts the collectives (BatchNorm statistics, the loss over
the global batch, the gradient all-reduce). The old state is donated so its
buffers are reused in place.
"""
import functools
from typing import Any, Callable, Mapping, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from mio_jax import losses
from mio_jax import mesh as mesh_lib
from mio_jax import models
from mio_jax import optim

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  """Everything that changes during pretraining (and is checkpointed)."""
  step: jax.Array  # int32 scalar: number of updates applied so far
  params: Any
  batch_stats: Any  # BatchNorm running averages
  opt_state: Any
  rng: jax.Array  # uint32 key data (jax.random.key_data), checkpointable as is


class NonFiniteLossError(FloatingPointError):
  """The loss or gradient norm of a step was NaN or infinite."""


def total_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """`config.total_steps` when > 0, else `num_epochs * steps_per_epoch`."""
  if config.total_steps > 0:
    return int(config.total_steps)
  if steps_per_epoch < 1:
    raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch} "
                     "(is batch_size larger than the dataset?).")
  return int(config.num_epochs * steps_per_epoch)


def _model(config: ml_collections.ConfigDict) -> nn.Module:
  return models.build_model(config.model, dtype=config.dtype)


def create_train_state(config: ml_collections.ConfigDict, mesh: Mesh, *,
                       steps_per_epoch: int) -> TrainState:
  """A freshly initialised state (seeded by config.seed), replicated on mesh."""
  return _init_fn(ml_collections.FrozenConfigDict(config), mesh,
                  steps_per_epoch)()


# The builders below are cached on (frozen config, mesh, steps_per_epoch) so
# that asking twice for the same function (a resumed run in the same process,
# main.py and the tests) reuses the jitted function and its compiled
# executable instead of compiling again (the init alone takes seconds on CPU).
@functools.lru_cache(maxsize=16)
def _init_fn(config: ml_collections.FrozenConfigDict, mesh: Mesh,
             steps_per_epoch: int) -> Callable[[], TrainState]:
  model = _model(config)
  tx, _ = optim.make_optimizer(
      config, total_steps=total_steps(config, steps_per_epoch),
      steps_per_epoch=steps_per_epoch)
  size = config.dataset.image_size

  def init() -> TrainState:
    params_key, state_key = jax.random.split(jax.random.key(config.seed))
    variables = model.init(params_key, jnp.zeros((2, size, size, 3)),
                           train=False)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables["batch_stats"],
                      opt_state=tx.init(params),
                      rng=jax.random.key_data(state_key))

  return jax.jit(init, out_shardings=mesh_lib.replicated_sharding(mesh))


def training_objective(model: nn.Module, params: Any, batch_stats: Any,
                       batch: Batch, loss_fn: Callable[[jax.Array, jax.Array],
                                                       jax.Array], *,
                       rng: Optional[jax.Array] = None
                      ) -> tuple[jax.Array, tuple[Any, jax.Array, jax.Array]]:
  """The pretraining loss of `params` on `batch`, as the train step has it.

  Returns (loss, (new_batch_stats, u1, u2)): the BatchNorm running averages
  after this batch (train mode) and the (B, d) projections of each view.
  The train step differentiates this; the Hessian analysis
  (`mio_jax.analysis.hessian`) takes its second derivatives.

  The views are interleaved (rows 2i, 2i+1 are the views of image i) so one
  forward pass sees both and every device keeps its own images: stacking on
  a new axis 1 and merging it into the sharded batch axis moves no data,
  unlike concatenating the two sharded batches. BatchNorm thus normalises
  over both views of the global batch, as in SimCLR.
  """
  view1, view2 = batch["view1"], batch["view2"]
  num_images = view1.shape[0]
  images = jnp.stack([view1, view2], axis=1).reshape(
      (2 * num_images,) + view1.shape[1:])
  rngs = {} if rng is None else {"dropout": rng}
  (_, projections), new_vars = model.apply(
      {"params": params, "batch_stats": batch_stats}, images, train=True,
      mutable=["batch_stats"], rngs=rngs)
  projections = projections.reshape(num_images, 2, -1)
  u1, u2 = projections[:, 0], projections[:, 1]
  return loss_fn(u1, u2), (new_vars["batch_stats"], u1, u2)


def make_train_step(config: ml_collections.ConfigDict, mesh: Mesh, *,
                    steps_per_epoch: int
                   ) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """The jitted update step; the input state is donated (do not reuse it).

  batch: {"view1", "view2": f32 (B, H, W, 3), "label": int32 (B,)}, sharded
  over `data`. Metrics (replicated scalars): loss, grad_norm, learning_rate
  and the pair metrics of `losses.pair_metrics`.
  """
  return _train_step_fn(ml_collections.FrozenConfigDict(config), mesh,
                        steps_per_epoch)


@functools.lru_cache(maxsize=16)
def _train_step_fn(config: ml_collections.FrozenConfigDict, mesh: Mesh,
                   steps_per_epoch: int
                  ) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  model = _model(config)
  tx, schedule = optim.make_optimizer(
      config, total_steps=total_steps(config, steps_per_epoch),
      steps_per_epoch=steps_per_epoch)
  loss_fn = losses.make_loss(
      config.loss, temperature=config.temperature,
      negative_temperature=config.negative_temperature,
      reg_weight=config.reg_weight, block_size=config.loss_block_size)

  def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    # The per-step key goes to any stochastic layer (the ResNet has none);
    # derived from (state key, step) it is the same after a resume.
    step_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng),
                                  state.step)
    (loss, (batch_stats, u1, u2)), grads = jax.value_and_grad(
        lambda params: training_objective(model, params, state.batch_stats,
                                          batch, loss_fn, rng=step_rng),
        has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1,
                              params=optax.apply_updates(state.params, updates),
                              batch_stats=batch_stats, opt_state=opt_state)
    metrics = {
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
        "learning_rate": schedule(state.step),
        **losses.pair_metrics(
            u1, u2, temperature=config.temperature,
            negative_temperature=config.negative_temperature,
            block_size=config.loss_block_size),
    }
    return new_state, metrics

  replicated = mesh_lib.replicated_sharding(mesh)
  return jax.jit(train_step,
                 in_shardings=(replicated, mesh_lib.batch_sharding(mesh)),
                 out_shardings=(replicated, replicated), donate_argnums=(0,))


def make_encode_fn(config: ml_collections.ConfigDict, mesh: Mesh
                  ) -> Callable[[TrainState, jax.Array], jax.Array]:
  """Jitted (state, images (B, H, W, 3)) -> backbone features (B, D) f32.

  BatchNorm uses its running averages; the projector is not evaluated (XLA
  drops the unused branch). The features stay sharded over `data`.
  """
  return _encode_fn(ml_collections.FrozenConfigDict(config), mesh)


@functools.lru_cache(maxsize=16)
def _encode_fn(config: ml_collections.FrozenConfigDict, mesh: Mesh
              ) -> Callable[[TrainState, jax.Array], jax.Array]:
  model = _model(config)

  def encode(state: TrainState, images: jax.Array) -> jax.Array:
    features, _ = model.apply(
        {"params": state.params, "batch_stats": state.batch_stats}, images,
        train=False)
    return features

  batch = mesh_lib.batch_sharding(mesh)
  return jax.jit(encode,
                 in_shardings=(mesh_lib.replicated_sharding(mesh), batch),
                 out_shardings=batch)


def check_finite(step: int, metrics: Mapping[str, Any]) -> None:
  """Raises NonFiniteLossError naming `step` if loss or grad_norm is not finite."""
  loss, grad_norm = (float(metrics["loss"]), float(metrics["grad_norm"]))
  if not (np.isfinite(loss) and np.isfinite(grad_norm)):
    raise NonFiniteLossError(
        f"Non-finite training at step {step}: loss={loss}, "
        f"grad_norm={grad_norm}. Training stopped; the last checkpoint "
        "(before this step) is kept. Lower the learning rate, raise the "
        "temperature, or set optimizer.grad_clip_norm.")
