"""Orbax checkpoints of the TrainState: periodic, asynchronous, resumable.

Checkpoints live in `<workdir>/checkpoints/<step>/` (Orbax step folders,
written atomically: a run killed mid-save leaves the previous ones intact).
Next to them, `run_metadata.json` records the model, loss and optimizer the
checkpoints belong to, so that resuming with another model fails with a clear
message instead of a shape error deep inside Orbax. No pickle anywhere: the
state is a pytree of arrays (the rng is stored as its uint32 key data).
"""
import json
from typing import Any, Optional

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import Mesh

from mio_jax import train

CHECKPOINT_SUBDIR = "checkpoints"
METADATA_FILE = "run_metadata.json"


class CheckpointMismatchError(RuntimeError):
  """The checkpoints in the workdir belong to another model/loss/optimizer."""


def checkpoint_dir(workdir: str) -> epath.Path:
  # Orbax refuses relative paths ("Checkpoint path should be absolute"), so
  # a local --workdir=runs/x is made absolute; gs:// paths already are.
  path = epath.Path(workdir) / CHECKPOINT_SUBDIR
  return path if "://" in str(workdir) else path.absolute()


def run_metadata(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """What must not change between a checkpoint and the run resuming it."""
  metadata = {"model": config.model.to_dict(), "loss": config.loss,
              "optimizer": config.optimizer.name}
  return json.loads(json.dumps(metadata))  # tuples -> lists, as when re-read


def read_metadata(workdir: str) -> Optional[dict[str, Any]]:
  """The run metadata stored with the checkpoints of `workdir`, or None."""
  path = checkpoint_dir(workdir) / METADATA_FILE
  return json.loads(path.read_text()) if path.exists() else None


def metadata_mismatch(workdir: str,
                      config: ml_collections.ConfigDict) -> str:
  """How workdir's checkpoints differ from `config` ("" if they do not)."""
  stored, expected = read_metadata(workdir), run_metadata(config)
  if stored is None or stored == expected:
    return ""
  return "; ".join(
      f"{key}: checkpoint {stored.get(key)!r}, config {expected.get(key)!r}"
      for key in sorted(set(stored) | set(expected))
      if stored.get(key) != expected.get(key))


def check_metadata(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Raises CheckpointMismatchError if workdir's checkpoints are another run's."""
  mismatch = metadata_mismatch(workdir, config)
  if mismatch:
    raise CheckpointMismatchError(
        f"The checkpoints in {checkpoint_dir(workdir)} come from another run "
        f"({mismatch}). Use a new --workdir, or the config the checkpoints "
        "were made with.")


class Checkpointer:
  """Saves and restores TrainStates under `<workdir>/checkpoints`.

  Saves run in the background; call `wait()` (or `close()`) before exiting.
  Every process must call `save`/`restore` (Orbax coordinates the hosts).
  """

  def __init__(self, workdir: str, config: ml_collections.ConfigDict):
    check_metadata(workdir, config)
    self.directory = checkpoint_dir(workdir)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=config.keep_checkpoints, create=True,
            enable_async_checkpointing=True))
    self._metadata = run_metadata(config)

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, state: Any) -> bool:
    """Starts saving `state` at its step; False if that step is already saved."""
    step = int(state.step)
    if step in self._manager.all_steps():
      return False
    # Written with the first checkpoint: a run that saved nothing claims
    # nothing, so its workdir may be reused with another model.
    metadata_path = self.directory / METADATA_FILE
    if jax.process_index() == 0 and not metadata_path.exists():
      metadata_path.write_text(json.dumps(self._metadata, indent=2))
    # force: the caller decides when to save (Orbax would otherwise skip a
    # save while the previous asynchronous one is still being written).
    return self._manager.save(step, args=ocp.args.StandardSave(state),
                              force=True)

  def restore(self, target: Any, step: Optional[int] = None) -> Any:
    """The state saved at `step` (default: latest), shaped/sharded like target."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    try:
      return self._manager.restore(step, args=ocp.args.StandardRestore(target))
    except (ValueError, KeyError, TypeError) as error:
      raise CheckpointMismatchError(
          f"Checkpoint {self.directory / str(step)} does not match the state "
          f"of this config ({type(error).__name__}: {error}). Use a new "
          "--workdir, or the config the checkpoint was made with.") from error

  def wait(self) -> None:
    """Blocks until background saves have finished."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def restore_latest_or_fail(config: ml_collections.ConfigDict, workdir: str,
                           mesh: Mesh, *,
                           steps_per_epoch: int) -> train.TrainState:
  """The latest TrainState saved in workdir (for evaluation-only modes).

  steps_per_epoch: as in pretraining (it shapes the learning-rate schedule of
  the fresh state the checkpoint is restored into).
  """
  directory = checkpoint_dir(workdir)
  # Checked before opening a Checkpointer, which would create the directory.
  if not directory.exists() or not any(p.name.isdigit()
                                       for p in directory.iterdir()):
    raise FileNotFoundError(
        f"No checkpoint in {directory}: pretrain first (--config.mode="
        "pretrain or all with this --workdir).")
  checkpointer = Checkpointer(workdir, config)
  try:
    target = train.create_train_state(config, mesh,
                                      steps_per_epoch=steps_per_epoch)
    return checkpointer.restore(target)
  finally:
    checkpointer.close()
