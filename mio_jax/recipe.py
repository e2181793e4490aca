"""The pretraining recipe: its pieces, built once from the config.

`build_recipe(config, mesh, data_facts)` turns the config into one small
frozen value, `Recipe`: the model, the optimizer and its learning-rate
schedule, the pair loss and the pair metrics (both split over the mesh's
devices), the run length and the few plain settings the step and the
initial state read (seed, BatchNorm over views, image size, batch). Below
it nothing reads the config: `pretraining` takes a `Recipe`.

Evaluation needs none of this (only the model): see `models.build_model`
and `checkpointing.restore_variables`.
"""
import dataclasses
from typing import Callable, Mapping, Optional, Sequence

import jax
import ml_collections
import optax
from jax.sharding import Mesh

from mio_jax import losses
from mio_jax import models
from mio_jax import optim
from mio_jax.data import augment_recipe
from mio_jax.data import device_augment
from mio_jax.data import indexing

PairFn = Callable[[jax.Array, jax.Array], jax.Array]
Batch = Mapping[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class DataFacts:
  """What pretraining must know of its data set before reading a batch.

  num_examples: the pretraining split's size (steps per epoch at the batch);
  num_classes: classes of the batches' labels, for the online probe (None:
  no labels); mean, std: per channel, for augment.on_device (None: not
  known); identity: the prepared data set's identity, recorded so that a
  resume on other data stops (None: synthetic batches).
  """
  num_examples: int
  num_classes: Optional[int] = None
  mean: Optional[Sequence[float]] = None
  std: Optional[Sequence[float]] = None
  identity: Optional[str] = None

  @classmethod
  def of(cls, info, identity: Optional[str] = None) -> "DataFacts":
    """The facts of `data.DatasetInfo` `info`."""
    return cls(int(info.num_pretrain_examples), int(info.num_classes),
               tuple(info.mean), tuple(info.std), identity)


# eq=False: a Recipe is hashed by identity, so jitted functions built from
# it are cached per recipe (see pretraining.make_train_step).
@dataclasses.dataclass(frozen=True, eq=False)
class Recipe:
  """What pretraining is made of."""
  mesh: Mesh
  model: models.Encoder
  loss_fn: PairFn  # (u1, u2) (B, d) projections -> scalar loss
  pair_metrics_fn: Callable[[jax.Array, jax.Array], dict[str, jax.Array]]
  optimizer: optax.GradientTransformation
  schedule: optax.Schedule
  steps_per_epoch: int
  total_steps: int
  seed: int  # the initial variables and the training-state key
  image_size: int
  batch_size: int  # global
  bn_views: str  # pretraining.BN_VIEWS
  # The online linear probe: its optimizer and the number of classes, or
  # None when it is off (config.online_probe.enabled, or no labels).
  probe_optimizer: Optional[optax.GradientTransformation] = None
  num_classes: Optional[int] = None
  # (batch, step) -> batch with the colour augmentation done on the device
  # (config.augment.on_device), or None when the host did it.
  augment_fn: Optional[Callable[[Batch, jax.Array], Batch]] = None


def total_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """`config.total_steps` when set, else `num_epochs * steps_per_epoch`."""
  if config.total_steps is not None:
    return int(config.total_steps)
  return int(config.num_epochs * steps_per_epoch)


def steps_per_epoch(config: ml_collections.ConfigDict, facts: DataFacts) -> int:
  """Pretraining batches per epoch; raises indexing.BatchTooLargeError when
  config.batch_size exceeds the split."""
  return indexing.steps_per_epoch(facts.num_examples, int(config.batch_size))


def build_recipe(config: ml_collections.ConfigDict, mesh: Mesh,
                 facts: DataFacts) -> Recipe:
  """The pieces of pretraining `config` on `mesh` with data of `facts`.

  The steps per epoch (from facts.num_examples) set the run length and the
  warm-up/cosine schedule. Raises errors.InvalidValueError for a bad
  model, loss or optimizer setting.
  """
  loss_fn = losses.make_loss(config.loss, block_size=config.loss_block_size,
                             mesh=mesh,
                             **losses.config_options(config.loss, config))

  def pair_metrics_fn(u1, u2):
    # The pair classifier's view of every loss: MIO's temperatures.
    return losses.pair_metrics(
        u1, u2, temperature=config.temperature,
        negative_temperature=config.negative_temperature,
        block_size=config.loss_block_size, mesh=mesh)

  epoch = steps_per_epoch(config, facts)
  length = total_steps(config, epoch)
  optimizer, schedule = optim.make_optimizer(
      config.optimizer, batch_size=config.batch_size, total_steps=length,
      steps_per_epoch=epoch, frozen=models.frozen_params(config.model))
  probe = config.online_probe.enabled and facts.num_classes is not None
  augment_fn = None
  if config.augment.on_device:
    if facts.mean is None or facts.std is None:
      raise ValueError("config.augment.on_device needs the data set's "
                       "normalization (DataFacts.mean, std)")
    augment_fn = device_augment.batch_augmenter(
        seed=int(config.seed),
        params=augment_recipe.AugmentParams.from_config(config),
        mean=facts.mean, std=facts.std)

  return Recipe(mesh=mesh,
                model=models.build_model(config.model, dtype=config.dtype),
                loss_fn=loss_fn, pair_metrics_fn=pair_metrics_fn,
                optimizer=optimizer, schedule=schedule,
                steps_per_epoch=int(epoch), total_steps=length,
                seed=int(config.seed),
                image_size=int(config.dataset.image_size),
                batch_size=int(config.batch_size),
                bn_views=str(config.bn_views),
                probe_optimizer=(optim.online_probe_optimizer(
                    config.online_probe.lr) if probe else None),
                num_classes=int(facts.num_classes) if probe else None,
                augment_fn=augment_fn)
