"""Checks a config and workdir before any work starts.

Each module checks its own settings (`models.check_config`,
`optim.check_config`, `losses.make_loss`, ...) and raises
`errors.InvalidValueError` with the key relative to its section; this
module only runs those checks, reports the key under its config path
(`config.model.stem`, fix `--config.model.stem=...`) and checks what spans
modules (the batch against the device count and the loss blocks). Every
problem is a `ConfigError`: one line naming the key, the bad value and the
fix, which the command line prints before exiting with status 2.
"""
import contextlib
import uuid
from typing import Optional

import ml_collections
from etils import epath

from mio_jax import checkpointing
from mio_jax import encoder_sources
from mio_jax import errors
from mio_jax import loop
from mio_jax import losses
from mio_jax import metric_logging
from mio_jax import models
from mio_jax import modes
from mio_jax import optim
from mio_jax import resume_guard
from mio_jax import pretraining
from mio_jax import supervised
from mio_jax.evaluation import protocols


class ConfigError(errors.UserError, ValueError):
  """A config value or workdir that cannot work; the message says the fix."""


@contextlib.contextmanager
def _section(prefix: str = "", renamed: Optional[dict[str, str]] = None):
  """Reports an InvalidValueError of the block under `config.<prefix>`.

  renamed: the config key of an argument named otherwise by its module.
  """
  try:
    yield
  except errors.InvalidValueError as error:
    key = prefix + (renamed or {}).get(error.key, error.key)
    raise ConfigError(error.describe(f"config.{key}", f"--config.{key}")
                      ) from None


def _divisible(key: str, value: int, divisor: int, what: str) -> None:
  if value % divisor:
    lower = max(divisor, value // divisor * divisor)
    raise ConfigError(
        f"config.{key}={value} is not divisible by {what} ({divisor}); "
        f"use a multiple of {divisor}, e.g. --config.{key}={lower}")


def validate_config(config: ml_collections.ConfigDict, *,
                    device_count: int) -> None:
  """Raises ConfigError on the first impossible value."""
  with _section():
    errors.check_one_of("mode", config.mode, modes.MODES)
  with _section(renamed={"block_size": "loss_block_size"}):
    losses.make_loss(config.loss, temperature=config.temperature,
                     negative_temperature=config.negative_temperature,
                     reg_weight=config.reg_weight,
                     block_size=config.loss_block_size)
  with _section():
    errors.check_positive("batch_size", config.batch_size)
    if config.total_steps is None:
      errors.check_positive("num_epochs", config.num_epochs)
    elif config.total_steps <= 0:
      raise errors.InvalidValueError(
          "total_steps", config.total_steps, "must be > 0",
          "leave {key} unset to train config.num_epochs epochs, or set it "
          "to a positive number of steps")
    models.check_dtype(config.dtype)
    loop.check_config(config)
    pretraining.check_config(config)
  with _section("logging."):
    metric_logging.check_config(config.logging)
  with _section("model."):
    models.check_config(config.model)
  with _section("optimizer."):
    optim.check_config(config.optimizer)
  with _section("linear_eval."):
    supervised.check_linear_eval_config(config.linear_eval)
  with _section("finetune."):
    supervised.check_finetune_config(config.finetune)
    supervised.check_finetune_backbone(config.finetune, config.model.name)
  with _section("eval."):
    errors.check_positive("batch_size", config.eval.batch_size)
  with _section():
    protocols.check_config(config)
  with _section():
    resume_guard.allowed_changes(config)

  _divisible("batch_size", config.batch_size, device_count, "the device count")
  for key in ("eval.batch_size", "linear_eval.batch_size",
              "finetune.batch_size"):
    section, name = key.split(".")
    _divisible(key, config[section][name], device_count, "the device count")
  with _section(renamed={"block_size": "loss_block_size"}):
    losses.check_block_size(config.loss_block_size,
                            num_images=config.batch_size,
                            num_devices=device_count)
  # Last, and imported here: the data set checks load TensorFlow (seconds),
  # which a mistake in any other key need not wait for.
  from mio_jax import data  # pylint: disable=g-import-not-at-top
  from mio_jax.data import augment_recipe  # pylint: disable=g-import-not-at-top
  with _section("dataset."):
    data.check_config(config.dataset)
  with _section("model."):
    models.check_image_size(config.model, config.dataset.image_size)
  try:
    augment_recipe.AugmentParams.from_config(config)
  except ValueError as e:
    raise ConfigError(f"{e}; fix the --config.augment.* value") from None


def validate_workdir(workdir: str,
                     config: Optional[ml_collections.ConfigDict] = None) -> None:
  """The workdir must be writable, and any checkpoint in it this model's."""
  if not workdir:
    raise ConfigError("--workdir is required; e.g. --workdir=runs/my_run")
  existing = epath.Path(workdir)
  while not existing.exists() and existing != existing.parent:
    existing = existing.parent
  if existing.exists() and not existing.is_dir():
    where = "" if str(existing) == str(epath.Path(workdir)) else (
        f" under {str(existing)!r}, which")
    raise ConfigError(f"--workdir={workdir!r}{where} is a file; give a "
                      "directory")
  try:
    directory = epath.Path(workdir)
    directory.mkdir(parents=True, exist_ok=True)
    # Unique per process: every host of a multi-host run probes the same
    # shared workdir at the same time.
    probe = directory / f".write_probe_{uuid.uuid4().hex}"
    probe.write_text("ok")
    probe.unlink()
  except Exception as e:  # pylint: disable=broad-except
    # epath raises OSError locally and the file system's own errors on gs://.
    reason = getattr(e, "strerror", None) or getattr(e, "message", None) or str(e)
    raise ConfigError(f"--workdir={workdir!r} is not writable ({reason.strip()}); "
                      "pass a directory you can write to") from None
  if config is None:
    return
  source = modes.encoder_source(config, workdir)
  if source is None:
    # Training must continue the stored recipe. Steps per epoch and run
    # length are checked again once the data set is read (when the
    # pretraining Checkpointer opens).
    _check_checkpoints(f"--workdir={workdir!r}", lambda: (
        checkpointing.check_resume(workdir, resume_guard.pretraining_record(
            config, total_steps=config.total_steps))))
  elif source.kind == encoder_sources.FILE:
    if not epath.Path(source.path).exists():
      raise ConfigError(
          f"{_source_key(config)}={source.path!r}: no such encoder file; "
          "write one with python -m mio_jax.cli.export, or name a "
          "pretraining workdir")
  elif source.kind == encoder_sources.WORKDIR:
    _check_saved_encoder(config, workdir, source)


def _source_key(config: ml_collections.ConfigDict) -> str:
  """The config key that names config.mode's encoder."""
  if modes.MODES[config.mode].encoder == modes.FINETUNE_INIT:
    return "config.finetune.init_from"
  return "config.eval.encoder_file"


def _check_checkpoints(label: str, check) -> None:
  try:
    check()
  except checkpointing.CheckpointMismatchError as e:
    raise ConfigError(f"{label}: {e}") from None


def _check_saved_encoder(config: ml_collections.ConfigDict, workdir: str,
                         source: encoder_sources.EncoderSource) -> None:
  """The step `source` names is saved, and of config's architecture."""
  here = modes.MODES[config.mode].encoder == modes.EVALUATED  # --workdir's
  step_key = "config.eval.step" if here else "config.finetune.init_step"
  try:
    checkpointing.saved_step(source.path, source.step)
  except checkpointing.NoCheckpointError as error:
    if error.saved:
      raise ConfigError(f"{step_key}={source.step}: {error}") from None
    if here:
      raise ConfigError(
          f"--mode={config.mode} evaluates a saved step, but --workdir="
          f"{workdir!r} holds no checkpoint; pretrain first (--mode=pretrain "
          "or all with this --workdir), or set --config.eval.encoder_file"
          ) from None
    raise ConfigError(
        f"config.finetune.init_from={source.path!r} holds no checkpoint and "
        "no exported encoder; name a pretraining workdir or an exported "
        "file (python -m mio_jax.cli.export), or leave it empty to start "
        "from a random initialisation") from None
  _check_checkpoints(
      f"--workdir={workdir!r}" if here else f"{_source_key(config)}="
      f"{source.path!r}", lambda: checkpointing.check_resume(
          source.path, resume_guard.architecture_record(config)))
