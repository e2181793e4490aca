"""A pretraining run's pieces, built once from its config.

`build_run(config, mesh, steps_per_epoch=...)` turns the config into one
small frozen value, `Run`: the model, the optimizer and its learning-rate
schedule, the pair loss and the pair metrics (both split over the mesh's
devices), and the run length. The training module takes a `Run` and never
reads the config to rebuild any of them.

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

PairFn = Callable[[jax.Array, jax.Array], jax.Array]
Batch = Mapping[str, jax.Array]


# eq=False: a Run is hashed by identity, so jitted functions built from it
# can be cached per run (see train.make_train_step).
@dataclasses.dataclass(frozen=True, eq=False)
class Run:
  """What a pretraining run is made of."""
  config: ml_collections.FrozenConfigDict
  mesh: Mesh
  model: models.Encoder
  loss_fn: PairFn  # (u1, u2) (B, d) projections -> scalar loss
  pair_metrics_fn: Callable[[jax.Array, jax.Array], dict[str, jax.Array]]
  optimizer: optax.GradientTransformation
  schedule: optax.Schedule
  steps_per_epoch: int
  total_steps: int
  # The online linear probe: its optimizer and the number of classes, or
  # None when it is off (config.online_probe.enabled, or no labels).
  probe_optimizer: Optional[optax.GradientTransformation] = None
  num_classes: Optional[int] = None
  # (batch, step) -> batch with the colour augmentation done on the device
  # (config.augment.on_device), or None when the host did it.
  augment_fn: Optional[Callable[[Batch, jax.Array], Batch]] = None
  # The prepared data set's TFDS name (an image folder's holds a
  # fingerprint of its files), recorded so a resume on other data stops.
  prepared_dataset: Optional[str] = None


def total_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """`config.total_steps` when set, else `num_epochs * steps_per_epoch`."""
  if config.total_steps is not None:
    return int(config.total_steps)
  return int(config.num_epochs * steps_per_epoch)


def build_run(config: ml_collections.ConfigDict, mesh: Mesh, *,
              steps_per_epoch: int, num_classes: Optional[int] = None,
              normalization: Optional[tuple[Sequence[float],
                                            Sequence[float]]] = None,
              prepared_dataset: Optional[str] = None) -> Run:
  """The pieces of pretraining `config` on `mesh`.

  steps_per_epoch: pretraining batches per epoch (`data.pretrain_steps_per_epoch`);
  it sets the run length and the warm-up/cosine schedule.
  num_classes: classes of the labels in the batches, for the online probe
  (None: no probe).
  normalization: (mean, std) per channel of the data set, needed with
  config.augment.on_device (the device normalises after its colour ops).
  prepared_dataset: the data set's TFDS name (`data.dataset_spec`), guarded
  on resume (None: synthetic batches).
  Raises errors.InvalidValueError for a bad model, loss or optimizer setting.
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

  length = total_steps(config, steps_per_epoch)
  optimizer, schedule = optim.make_optimizer(
      config.optimizer, batch_size=config.batch_size, total_steps=length,
      steps_per_epoch=steps_per_epoch,
      frozen=models.frozen_params(config.model))
  probe = config.online_probe.enabled and num_classes is not None
  augment_fn = None
  if config.augment.on_device:
    if normalization is None:
      raise ValueError("config.augment.on_device needs the data set's "
                       "normalization (mean, std) in build_run")
    # Imported here: the data package loads TensorFlow, which a run on
    # synthetic batches (tests, benchmarks) does not need.
    from mio_jax.data import device_augment  # pylint: disable=g-import-not-at-top
    mean, std = normalization
    augment_fn = device_augment.batch_augmenter(config, mean=mean, std=std)

  return Run(config=ml_collections.FrozenConfigDict(config), mesh=mesh,
             model=models.build_model(config.model, dtype=config.dtype),
             loss_fn=loss_fn, pair_metrics_fn=pair_metrics_fn,
             optimizer=optimizer, schedule=schedule,
             steps_per_epoch=int(steps_per_epoch), total_steps=length,
             probe_optimizer=(optim.online_probe_optimizer(
                 config.online_probe.lr) if probe else None),
             num_classes=int(num_classes) if probe else None,
             augment_fn=augment_fn, prepared_dataset=prepared_dataset)
