"""Checks a config and workdir before any work starts.

Every problem is a `ConfigError` whose message is one line naming the key,
the bad value and the fix, so `main` can print it and exit with status 2.
"""
import os
import uuid
from typing import Iterable, Optional

import ml_collections
import tensorflow as tf

from mio_jax import checkpointing
from mio_jax import data
from mio_jax import losses
from mio_jax import models
from mio_jax import optim
from mio_jax.data import augment

MODES = ("pretrain", "linear_eval", "knn_eval", "fewshot_eval", "all")
STEMS = ("cifar", "imagenet")
DTYPES = ("float32", "bfloat16")
LR_SCALINGS = ("linear", "none")


class ConfigError(ValueError):
  """A config value or workdir that cannot work; the message says the fix."""


def _one_of(key: str, value, valid: Iterable[str]) -> None:
  valid = tuple(valid)
  if value not in valid:
    raise ConfigError(
        f"config.{key}={value!r} is not one of {', '.join(map(repr, valid))}; "
        f"pass e.g. --config.{key}={valid[0]}")


def _positive(key: str, value, *, allow_zero: bool = False) -> None:
  if value is None or (value < 0 if allow_zero else value <= 0):
    bound = ">= 0" if allow_zero else "> 0"
    raise ConfigError(f"config.{key}={value!r} must be {bound}; "
                      f"set --config.{key} to a value {bound}")


def _divisible(key: str, value: int, device_count: int) -> None:
  if value % device_count:
    lower = max(device_count, value // device_count * device_count)
    raise ConfigError(
        f"config.{key}={value} is not divisible by the {device_count} devices; "
        f"use a multiple of {device_count}, e.g. --config.{key}={lower}")


def validate_config(config: ml_collections.ConfigDict, *,
                    device_count: int) -> None:
  """Raises ConfigError on the first impossible value."""
  _one_of("mode", config.mode, MODES)
  _one_of("loss", config.loss, losses.LOSSES)
  _positive("temperature", config.temperature)
  if config.negative_temperature is not None:
    _positive("negative_temperature", config.negative_temperature)
  _positive("reg_weight", config.reg_weight, allow_zero=True)
  try:
    losses.make_loss(config.loss, temperature=config.temperature,
                     negative_temperature=config.negative_temperature,
                     reg_weight=config.reg_weight)
  except ValueError as e:
    raise ConfigError(f"config.loss={config.loss!r}: {e}") from None

  _one_of("dataset.name", config.dataset.name, data.DATASETS)
  _positive("dataset.image_size", config.dataset.image_size)
  try:
    augment.AugmentParams.from_config(config)
  except ValueError as e:
    raise ConfigError(f"{e}; fix the --config.augment.* value") from None

  _one_of("model.name", config.model.name, models.BACKBONES)
  _one_of("model.stem", config.model.stem, STEMS)
  _positive("model.width_multiplier", config.model.width_multiplier)
  _positive("model.projector_num_layers", config.model.projector_num_layers)
  _one_of("dtype", config.dtype, DTYPES)

  _one_of("optimizer.name", config.optimizer.name, optim.OPTIMIZERS)
  _one_of("optimizer.lr_scaling", config.optimizer.lr_scaling, LR_SCALINGS)
  _positive("optimizer.base_lr", config.optimizer.base_lr)
  _positive("optimizer.warmup_epochs", config.optimizer.warmup_epochs, allow_zero=True)
  _positive("optimizer.weight_decay", config.optimizer.weight_decay, allow_zero=True)

  _positive("batch_size", config.batch_size)
  _divisible("batch_size", config.batch_size, device_count)
  if config.loss_block_size is not None:
    _positive("loss_block_size", config.loss_block_size)
    if config.batch_size % config.loss_block_size:
      raise ConfigError(
          f"config.loss_block_size={config.loss_block_size} does not divide "
          f"config.batch_size={config.batch_size}; use a divisor of the batch "
          "(e.g. a power of two) or None for the dense loss")
  _positive("eval.batch_size", config.eval.batch_size)
  _divisible("eval.batch_size", config.eval.batch_size, device_count)
  if config.total_steps <= 0:
    _positive("num_epochs", config.num_epochs)
  _positive("checkpoint_every_steps", config.checkpoint_every_steps)
  _positive("keep_checkpoints", config.keep_checkpoints)
  _positive("log_every_steps", config.log_every_steps)
  _positive("online_eval_every_steps", config.online_eval_every_steps, allow_zero=True)
  _positive("eval.knn_k", config.eval.knn_k)
  _positive("eval.fewshot_shots", config.eval.fewshot_shots)
  _positive("eval.linear_epochs", config.eval.linear_epochs)


def validate_workdir(workdir: str, config: Optional[ml_collections.ConfigDict] = None) -> None:
  """The workdir must be writable, and any checkpoint in it from this model."""
  if not workdir:
    raise ConfigError("--workdir is required; e.g. --workdir=runs/my_run")
  try:
    tf.io.gfile.makedirs(workdir)
    # Unique per process: every host of a multi-host run probes the same
    # shared workdir at the same time.
    probe = os.path.join(workdir, f".write_probe_{uuid.uuid4().hex}")
    with tf.io.gfile.GFile(probe, "w") as f:
      f.write("ok")
    tf.io.gfile.remove(probe)
  except (OSError, tf.errors.OpError) as e:
    reason = getattr(e, "strerror", None) or getattr(e, "message", None) or str(e)
    raise ConfigError(f"--workdir={workdir!r} is not writable ({reason.strip()}); "
                      "pass a directory you can write to") from None
  if config is not None:
    mismatch = checkpointing.metadata_mismatch(workdir, config)
    if mismatch:
      raise ConfigError(
          f"--workdir={workdir!r} holds a checkpoint of another model ({mismatch}); "
          "use a new --workdir or the config it was trained with")
