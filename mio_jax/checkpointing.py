"""Orbax checkpoints of a run: periodic, asynchronous, resumable, guarded.

Checkpoints live in `<workdir>/checkpoints/<step>/` (Orbax step folders,
written atomically: a run killed mid-save leaves the previous ones intact).
Next to them, `run_metadata.json` records the settings the checkpoints were
made with (the whole config, `resume_guard`), so resuming with another
model, data set or recipe stops with one line naming the key instead of
silently changing the run (or failing with a shape error deep inside
Orbax). No pickle
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
from mio_jax import resume_guard

CHECKPOINT_SUBDIR = "checkpoints"
METADATA_FILE = "run_metadata.json"
# Orbax's name for the single item each step folder holds.
_ITEM = "default"


class CheckpointMismatchError(errors.UserError):
  """The workdir's checkpoints were made with other settings."""


class NoCheckpointError(errors.UserError):
  """An evaluation was asked for, but the workdir holds no checkpoint."""


def checkpoint_dir(workdir: str) -> epath.Path:
  # Orbax refuses relative paths ("Checkpoint path should be absolute"), so
  # a local --workdir=runs/x is made absolute; gs:// paths already are.
  path = epath.Path(workdir) / CHECKPOINT_SUBDIR
  return path if "://" in str(workdir) else path.absolute()


def run_settings(config: ml_collections.ConfigDict, **derived: Any
                ) -> dict[str, Any]:
  """The settings recorded with the checkpoints (`resume_guard.record`)."""
  return resume_guard.record(config, **derived)


def read_metadata(workdir: str) -> Optional[dict[str, Any]]:
  """The metadata stored with the checkpoints of `workdir`, or None."""
  return files.read_json(checkpoint_dir(workdir) / METADATA_FILE)


def refuse_changes(workdir: str, current: Mapping[str, Any],
                   guards: Callable[[str], bool], *,
                   describe: Callable[[str, Any, Any], str],
                   allowed: Iterable[str] = (),
                   total_steps: Optional[int] = None
                  ) -> list[tuple[str, Any, Any]]:
  """Raises CheckpointMismatchError if workdir's checkpoints differ in a
  guarded key (`resume_guard.differences`).

  Changes of keys in `allowed` pass and are returned. describe(key, stored,
  new): the one-line message (with its fix) for the first refused change.
  """
  metadata = read_metadata(workdir)
  if metadata is None:
    return []
  changes = resume_guard.differences(metadata, current, guards,
                                     total_steps=total_steps)
  refused = [change for change in changes if change[0] not in allowed]
  if refused:
    more = (f" ({len(refused) - 1} more settings differ too)"
            if len(refused) > 1 else "")
    raise CheckpointMismatchError(describe(*refused[0]) + more)
  return changes


def check_resume(workdir: str, config: ml_collections.ConfigDict, *,
                 steps_per_epoch: Optional[int] = None,
                 prepared_dataset: Optional[str] = None,
                 total_steps: Optional[int] = None,
                 architecture_only: bool = False) -> list[tuple[str, Any, Any]]:
  """Raises CheckpointMismatchError unless `config` may use workdir's checkpoints.

  The architecture must match; with architecture_only False (resuming
  pretraining), so must every guarded setting (`resume_guard`), except
  those config.resume_allow_changes names. steps_per_epoch and
  prepared_dataset: known once the data are read (None: not compared);
  total_steps: the run's effective length, for records of earlier builds.
  Returns the allowed changes found.
  """

  def describe(key, stored, new):
    architecture = key in resume_guard.ARCHITECTURE_KEYS
    if architecture:
      fix = "use a new --workdir or the checkpoint's model"
    elif key in resume_guard.STRUCTURE_KEYS:
      fix = f"use a new --workdir, or set config.{key} back"
    else:
      fix = (f"use a new --workdir, set config.{key} back, or pass "
             f"--config.resume_allow_changes={key} to change it on purpose")
    name = key if key in resume_guard.DERIVED_KEYS else f"config.{key}"
    return (f"the checkpoints in {checkpoint_dir(workdir)} are of another "
            f"{'model' if architecture else 'recipe'}: made with "
            f"{name}={stored!r}, this run has {new!r}; {fix}")

  guards = (resume_guard.ARCHITECTURE_KEYS.__contains__ if architecture_only
            else resume_guard.guards_pretraining)
  try:
    allowed = () if architecture_only else resume_guard.allowed_changes(config)
    changes = refuse_changes(
        workdir, run_settings(config, steps_per_epoch=steps_per_epoch,
                              prepared_dataset=prepared_dataset),
        guards, describe=describe, allowed=allowed, total_steps=total_steps)
    resume_guard.check_allowed(changes)
  except errors.InvalidValueError as error:
    raise CheckpointMismatchError(error.describe(
        "config.resume_allow_changes", "--config.resume_allow_changes")
                                  ) from None
  return changes


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
    """Writes the settings (and any allowed changes) once per Checkpointer.

    A record of an earlier build is rewritten in this build's format.
    """
    path = self.directory / METADATA_FILE
    stored = files.read_json(path)
    if (stored is not None and not self._allowed_changes
        and stored.get("format") == resume_guard.FORMAT):
      return
    changes = (stored or {}).get("changes", []) + [
        {"key": key, "from": old, "to": new, "from_step": self.latest_step()}
        for key, old, new in self._allowed_changes]
    files.write_json(path, {"format": resume_guard.FORMAT,
                            "settings": self._settings, "changes": changes})

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
