"""Orbax checkpoints of a run: periodic, asynchronous, resumable, guarded.

Checkpoints live in `<workdir>/checkpoints/<step>/` (Orbax step folders,
written atomically: a run killed mid-save leaves the previous ones intact).
Next to them, `run_metadata.json` records the settings the checkpoints were
made with, so resuming with another model, data set, batch, loss, optimizer
or schedule stops with one line naming the key instead of silently changing
the run (or failing with a shape error deep inside Orbax). No pickle
anywhere: the state is a pytree of arrays (the rng as its uint32 key data).
"""
from typing import Any, Callable, Iterable, Mapping, Optional

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import Mesh

from mio_jax import errors
from mio_jax import files
from mio_jax import mesh as mesh_lib
from mio_jax import models

CHECKPOINT_SUBDIR = "checkpoints"
METADATA_FILE = "run_metadata.json"
# Orbax's name for the single item each step folder holds.
_ITEM = "default"

# The state's shapes: never allowed to change.
ARCHITECTURE_KEYS = (
    "model.name", "model.stem", "model.width_multiplier",
    "model.projector_num_layers", "model.projector_hidden_dim",
    "model.projector_output_dim", "model.projector_last_bn")
# What decides the update of step i: changed only when the user says so
# (config.resume_allow_changes), and then recorded in the metadata. Config
# keys, then the run length, known once the data set is read.
CONFIG_RECIPE_KEYS = (
    "dataset.name", "dataset.path", "dataset.pretrain_split",
    "dataset.image_size", "batch_size", "seed", "loss",
    "temperature", "negative_temperature", "reg_weight", "optimizer.name",
    "optimizer.base_lr", "online_probe.enabled")
RUN_LENGTH_KEYS = ("total_steps", "steps_per_epoch")
RECIPE_KEYS = CONFIG_RECIPE_KEYS + RUN_LENGTH_KEYS


class CheckpointMismatchError(errors.UserError):
  """The workdir's checkpoints were made with other settings."""


class NoCheckpointError(errors.UserError):
  """An evaluation was asked for, but the workdir holds no checkpoint."""


def checkpoint_dir(workdir: str) -> epath.Path:
  # Orbax refuses relative paths ("Checkpoint path should be absolute"), so
  # a local --workdir=runs/x is made absolute; gs:// paths already are.
  path = epath.Path(workdir) / CHECKPOINT_SUBDIR
  return path if "://" in str(workdir) else path.absolute()


def _config_value(config: ml_collections.ConfigDict, key: str):
  value = config
  for part in key.split("."):
    value = value[part]
  return value


def run_settings(config: ml_collections.ConfigDict, *,
                 steps_per_epoch: Optional[int] = None,
                 total_steps: Optional[int] = None) -> dict[str, Any]:
  """The settings recorded with the checkpoints, flat "a.b" keys.

  steps_per_epoch and total_steps are the run's effective values (known once
  the data set is read); None leaves them out.
  """
  settings = {key: _config_value(config, key)
              for key in ARCHITECTURE_KEYS + CONFIG_RECIPE_KEYS}
  if steps_per_epoch is not None:
    settings["steps_per_epoch"] = int(steps_per_epoch)
  if total_steps is not None:
    settings["total_steps"] = int(total_steps)
  return files.as_stored(settings)


def _stored_settings(metadata: Mapping[str, Any]) -> dict[str, Any]:
  """Settings of a metadata file, also of the first build's format."""
  if "settings" in metadata:
    return dict(metadata["settings"])
  # First build: {"model": {...}, "loss": ..., "optimizer": name}.
  settings = {f"model.{k}": v for k, v in metadata.get("model", {}).items()
              if f"model.{k}" in ARCHITECTURE_KEYS}
  if "loss" in metadata:
    settings["loss"] = metadata["loss"]
  if "optimizer" in metadata:
    settings["optimizer.name"] = metadata["optimizer"]
  return settings


def read_metadata(workdir: str) -> Optional[dict[str, Any]]:
  """The metadata stored with the checkpoints of `workdir`, or None."""
  return files.read_json(checkpoint_dir(workdir) / METADATA_FILE)


def allowed_changes(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The recipe keys config.resume_allow_changes names (checked)."""
  allowed = tuple(k.strip() for k in config.resume_allow_changes.split(",")
                  if k.strip())
  for key in allowed:
    errors.check_one_of("resume_allow_changes", key, RECIPE_KEYS)
  return allowed


def changed_settings(workdir: str, current: Mapping[str, Any],
                     keys: Iterable[str]) -> list[tuple[str, Any, Any]]:
  """(key, stored, current) for each of `keys` the checkpoints disagree on.

  Keys missing on either side are not compared.
  """
  metadata = read_metadata(workdir)
  if metadata is None:
    return []
  stored = _stored_settings(metadata)
  return [(key, stored[key], current[key]) for key in keys
          if key in stored and key in current and stored[key] != current[key]]


def refuse_changes(workdir: str, current: Mapping[str, Any],
                   keys: Iterable[str], *,
                   describe: Callable[[str, Any, Any], str],
                   allowed: Iterable[str] = ()) -> list[tuple[str, Any, Any]]:
  """Raises CheckpointMismatchError if workdir's checkpoints differ in `keys`.

  Changes of keys in `allowed` pass and are returned. describe(key, stored,
  new): the one-line message (with its fix) for the first refused change.
  """
  changes = changed_settings(workdir, current, keys)
  refused = [change for change in changes if change[0] not in allowed]
  if refused:
    more = (f" ({len(refused) - 1} more settings differ too)"
            if len(refused) > 1 else "")
    raise CheckpointMismatchError(describe(*refused[0]) + more)
  return changes


def check_resume(workdir: str, config: ml_collections.ConfigDict, *,
                 steps_per_epoch: Optional[int] = None,
                 total_steps: Optional[int] = None,
                 architecture_only: bool = False) -> list[tuple[str, Any, Any]]:
  """Raises CheckpointMismatchError unless `config` may use workdir's checkpoints.

  The architecture must match; with architecture_only False (resuming
  training), so must the recipe keys, except those in
  config.resume_allow_changes. Returns the allowed changes found.
  """

  def describe(key, stored, new):
    architecture = key in ARCHITECTURE_KEYS
    fix = ("use a new --workdir or the checkpoint's model" if architecture
           else f"use a new --workdir, set config.{key} back, or pass "
           f"--config.resume_allow_changes={key} to change it on purpose")
    return (f"the checkpoints in {checkpoint_dir(workdir)} are of another "
            f"{'model' if architecture else 'recipe'}: made with "
            f"config.{key}={stored!r}, this run has {new!r}; {fix}")

  return refuse_changes(
      workdir, run_settings(config, steps_per_epoch=steps_per_epoch,
                            total_steps=total_steps),
      ARCHITECTURE_KEYS if architecture_only else (ARCHITECTURE_KEYS
                                                   + RECIPE_KEYS),
      describe=describe,
      allowed=() if architecture_only else allowed_changes(config))


class Checkpointer:
  """Saves and restores TrainStates under `<workdir>/checkpoints`.

  Saves run in the background; call `wait()` (or `close()`) before exiting.
  Every process must call `save`/`restore` (Orbax coordinates the hosts).
  """

  def __init__(self, workdir: str, *, settings: Mapping[str, Any],
               keep: int, allowed_changes: Iterable[tuple[str, Any, Any]] = ()):
    """settings: `run_settings(...)` of this run, written with the first save.

    allowed_changes: (key, stored, new) accepted by `check_resume`; recorded
    in the metadata with the step they took effect at.
    """
    self.directory = checkpoint_dir(workdir)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=True))
    self._settings = dict(settings)
    self._allowed_changes = list(allowed_changes)
    self._metadata_written = False

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def _write_metadata(self) -> None:
    """Writes the settings (and any allowed changes) once per Checkpointer."""
    path = self.directory / METADATA_FILE
    stored = files.read_json(path)
    if stored is not None and not self._allowed_changes:
      return
    changes = (stored or {}).get("changes", []) + [
        {"key": key, "from": old, "to": new, "from_step": self.latest_step()}
        for key, old, new in self._allowed_changes]
    files.write_json(path, {"settings": self._settings, "changes": changes})

  def save(self, state: Any) -> bool:
    """Starts saving `state` at its step; False if that step is already saved."""
    step = int(state.step)
    if step in self._manager.all_steps():
      return False
    # Written with the first checkpoint: a run that saved nothing claims
    # nothing, so its workdir may be reused with another model.
    if jax.process_index() == 0 and not self._metadata_written:
      self._write_metadata()
      self._metadata_written = True
    # force: the caller decides when to save (Orbax would otherwise skip a
    # save while the previous asynchronous one is still being written).
    return self._manager.save(step, args=ocp.args.StandardSave(state),
                              force=True)

  def restore(self, target: Any, step: Optional[int] = None) -> Any:
    """The state saved at `step` (default: latest), shaped/sharded like target."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise NoCheckpointError(f"no checkpoint in {self.directory}")
    try:
      return self._manager.restore(step, args=ocp.args.StandardRestore(target))
    except (ValueError, KeyError, TypeError) as error:
      raise CheckpointMismatchError(
          f"checkpoint {self.directory / str(step)} does not match the state "
          f"of this config ({type(error).__name__}: {error}); use a new "
          "--workdir, or the config the checkpoint was made with") from error

  def wait(self) -> None:
    """Blocks until background saves have finished."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()  # waits for background saves, also on errors


def saved_steps(workdir: str) -> list[int]:
  """The steps saved in workdir, ascending (no folder is created)."""
  directory = checkpoint_dir(workdir)
  if not directory.exists():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def restore_variables(workdir: str, config: ml_collections.ConfigDict,
                      mesh: Mesh, *, step: Optional[int] = None
                      ) -> tuple[int, dict[str, Any]]:
  """(step, {"params", "batch_stats"}) of a saved step, for evaluation.

  Restores only the encoder (not the optimizer state), replicated on mesh;
  the template comes from `jax.eval_shape` of the model's init, so neither
  the data set nor the schedule is needed. step: default the latest.
  Raises NoCheckpointError (none, or not that step) and
  CheckpointMismatchError (another architecture).
  """
  steps = saved_steps(workdir)
  if not steps:
    raise NoCheckpointError(
        f"no checkpoint in {checkpoint_dir(workdir)}; pretrain first "
        "(--mode=pretrain or all with this --workdir)")
  step = steps[-1] if step is None else step
  if step not in steps:
    raise NoCheckpointError(
        f"step {step} is not saved in {checkpoint_dir(workdir)}; saved "
        f"steps: {', '.join(map(str, steps))}")
  check_resume(workdir, config, architecture_only=True)
  model = models.build_model(config.model, dtype=config.dtype)
  shapes = jax.eval_shape(lambda: models.init_variables(
      model, jax.random.key(0), image_size=config.dataset.image_size))
  replicated = mesh_lib.replicated_sharding(mesh)
  target = jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
      shapes)
  target["step"] = jax.ShapeDtypeStruct((), jax.numpy.int32,
                                        sharding=replicated)
  path = checkpoint_dir(workdir) / str(step) / _ITEM
  try:
    # The low-level checkpointer: a CheckpointManager refuses to read an
    # item saved by StandardSave through the partial-restore arguments.
    restored = ocp.PyTreeCheckpointer().restore(
        path, args=ocp.args.PyTreeRestore(
            item=target,
            restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True))
  except (ValueError, KeyError, TypeError) as error:
    raise CheckpointMismatchError(
        f"checkpoint {path} does not hold this config's encoder "
        f"({type(error).__name__}: {error}); use the config it was made "
        "with") from error
  return int(restored.pop("step")), restored
