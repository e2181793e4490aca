"""Orbax checkpoints of a training: periodic, asynchronous, resumable, guarded.

Checkpoints live in `<folder>/checkpoints/<step>/` (Orbax step folders,
written atomically: a run killed mid-save leaves the previous ones intact);
<folder> is the workdir for pretraining, `<workdir>/<protocol>/<encoder>`
for a supervised protocol. Next to them, `run_metadata.json` records the
settings the checkpoints were made with (`resume_guard.Record`): a
`Checkpointer` refuses to open on checkpoints of other settings, naming
every setting that differs, instead of silently changing the run (or
failing with a shape error deep inside Orbax). No pickle anywhere: the
state is a pytree of arrays (the rng as its uint32 key data).
"""
import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import Mesh

from mio_jax import errors
from mio_jax import mesh as mesh_lib
from mio_jax import models
from mio_jax import resume_guard

CHECKPOINT_SUBDIR = "checkpoints"
METADATA_FILE = resume_guard.METADATA_FILE
# Orbax's name for the single item each step folder holds.
_ITEM = "default"

CheckpointMismatchError = resume_guard.CheckpointMismatchError


class NoCheckpointError(errors.UserError):
  """An evaluation was asked for, but the workdir holds no such checkpoint."""

  def __init__(self, message: str, saved: tuple[int, ...] = ()):
    super().__init__(message)
    self.saved = saved  # the steps that are saved


def checkpoint_dir(workdir: str) -> epath.Path:
  # Orbax refuses relative paths ("Checkpoint path should be absolute"), so
  # a local --workdir=runs/x is made absolute; gs:// paths already are.
  path = epath.Path(workdir) / CHECKPOINT_SUBDIR
  return path if "://" in str(workdir) else path.absolute()


def read_metadata(workdir: str) -> Optional[dict[str, Any]]:
  """The record stored with the checkpoints of `workdir`, or None."""
  return resume_guard.read(checkpoint_dir(workdir))


def check_resume(workdir: str, record: resume_guard.Record
                ) -> list[tuple[str, Any, Any]]:
  """`resume_guard.check` of workdir's checkpoints: raises
  CheckpointMismatchError naming every differing setting; returns the
  allowed changes."""
  return resume_guard.check(checkpoint_dir(workdir), record)


class Checkpointer:
  """Saves and restores TrainStates under `<workdir>/checkpoints`.

  Saves run in the background; call `wait()` (or `close()`) before exiting.
  Every process must call `save`/`restore` (Orbax coordinates the hosts).
  """

  def __init__(self, workdir: str, *, record: resume_guard.Record,
               keep: int):
    """record: this training's settings (`resume_guard`), checked against
    the stored one here (CheckpointMismatchError names every difference)
    and written with the first save."""
    self.directory = checkpoint_dir(workdir)
    self._record = record
    self._allowed_changes = resume_guard.check(self.directory, record)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=True))
    self._metadata_written = False

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
    if jax.process_index() == 0 and not self._metadata_written:
      resume_guard.write(self.directory, self._record, self._allowed_changes,
                         from_step=self.latest_step())
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


def saved_step(workdir: str, step: Optional[int] = None) -> int:
  """`step` (default: the latest) if it is saved in workdir; the one check.

  Raises NoCheckpointError (with the saved steps) when none is, or not that
  one.
  """
  steps = saved_steps(workdir)
  if not steps:
    raise NoCheckpointError(f"no checkpoint in {checkpoint_dir(workdir)}")
  if step is None:
    return steps[-1]
  if step not in steps:
    raise NoCheckpointError(
        f"step {step} is not saved in {checkpoint_dir(workdir)}; saved "
        f"steps: {', '.join(map(str, steps))}", tuple(steps))
  return step


@dataclasses.dataclass(frozen=True)
class EncoderArchitecture:
  """What reading a saved encoder needs: the network, its input size and
  the record of its shapes that the saved one must match."""
  model: nn.Module
  image_size: int
  record: resume_guard.Record

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict
                 ) -> "EncoderArchitecture":
    return cls(models.build_model(config.model, dtype=config.dtype),
               int(config.dataset.image_size),
               resume_guard.architecture_record(config))


def restore_variables(workdir: str, architecture: EncoderArchitecture,
                      mesh: Mesh, *, step: Optional[int] = None
                      ) -> tuple[int, dict[str, Any]]:
  """(step, {"params", "batch_stats"}) of a saved step, for evaluation.

  Restores only the encoder (not the optimizer state), replicated on mesh;
  the template comes from `jax.eval_shape` of the model's init, so neither
  the data set nor the schedule is needed. step: default the latest.
  Raises NoCheckpointError (none, or not that step) and
  CheckpointMismatchError (another architecture).
  """
  try:
    step = saved_step(workdir, step)
  except NoCheckpointError as error:
    if error.saved:
      raise
    raise NoCheckpointError(
        f"{error}; pretrain first (--mode=pretrain or all with this "
        "--workdir)") from None
  check_resume(workdir, architecture.record)
  shapes = jax.eval_shape(lambda: models.init_variables(
      architecture.model, jax.random.key(0),
      image_size=architecture.image_size))
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
