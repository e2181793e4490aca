import jax
import numpy as np
import pytest

from mio_jax import checkpointing
from mio_jax import mesh as mesh_lib
from mio_jax import train
from pretrain_runner import STEPS_PER_EPOCH, tiny_config


def _state(config):
  return train.create_train_state(config, mesh_lib.make_data_mesh(),
                                  steps_per_epoch=STEPS_PER_EPOCH)


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_save_restore_roundtrip_is_exact(tmp_path):
  config = tiny_config()
  fresh = _state(config)
  # Every leaf differs from the fresh state the restore starts from.
  saved = jax.tree.map(lambda x: x + 1, fresh).replace(step=np.int32(7))
  checkpointer = checkpointing.Checkpointer(str(tmp_path), config)
  assert checkpointer.save(saved)
  assert not checkpointer.save(saved)  # the same step again: skipped, no error
  checkpointer.close()

  reopened = checkpointing.Checkpointer(str(tmp_path), config)
  assert reopened.latest_step() == 7
  restored = reopened.restore(_state(config))
  reopened.close()
  _assert_trees_equal(saved, restored)  # includes rng key data and opt_state
  assert restored.rng.dtype == np.uint32
  assert restored.params["projector"]["dense1"]["kernel"].sharding \
      .is_fully_replicated


def test_keeps_only_the_last_checkpoints(tmp_path):
  config = tiny_config(keep_checkpoints=2)
  state = _state(config)
  checkpointer = checkpointing.Checkpointer(str(tmp_path), config)
  for step in (2, 4, 6):
    checkpointer.save(state.replace(step=np.int32(step)))
    checkpointer.wait()
  assert checkpointer.all_steps() == [4, 6]
  checkpointer.close()


def test_checkpoints_of_another_model_are_refused(tmp_path):
  config = tiny_config()
  checkpointer = checkpointing.Checkpointer(str(tmp_path), config)
  checkpointer.save(_state(config))
  checkpointer.close()
  assert checkpointing.read_metadata(str(tmp_path)) == \
      checkpointing.run_metadata(config)

  other = tiny_config()
  other.model.width_multiplier = 1.0
  assert "0.5" in checkpointing.metadata_mismatch(str(tmp_path), other)
  assert checkpointing.metadata_mismatch(str(tmp_path), config) == ""
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match="width_multiplier.*0.5.*1.0"):
    checkpointing.Checkpointer(str(tmp_path), other)
  with pytest.raises(checkpointing.CheckpointMismatchError):
    checkpointing.restore_latest_or_fail(
        other, str(tmp_path), mesh_lib.make_data_mesh(),
        steps_per_epoch=STEPS_PER_EPOCH)


def test_restore_latest_or_fail(tmp_path):
  config = tiny_config()
  mesh = mesh_lib.make_data_mesh()
  with pytest.raises(FileNotFoundError, match="pretrain first"):
    checkpointing.restore_latest_or_fail(config, str(tmp_path), mesh,
                                         steps_per_epoch=STEPS_PER_EPOCH)
  assert not checkpointing.checkpoint_dir(str(tmp_path)).exists()
  checkpointer = checkpointing.Checkpointer(str(tmp_path), config)
  for step in (3, 5):
    checkpointer.save(_state(config).replace(step=np.int32(step)))
  checkpointer.close()
  restored = checkpointing.restore_latest_or_fail(
      config, str(tmp_path), mesh, steps_per_epoch=STEPS_PER_EPOCH)
  assert int(restored.step) == 5


def test_structure_mismatch_at_restore_is_a_clear_error(tmp_path):
  config = tiny_config()
  checkpointer = checkpointing.Checkpointer(str(tmp_path), config)
  checkpointer.save(_state(config))
  checkpointer.wait()
  other = tiny_config()
  other.model.projector_output_dim = 8  # same metadata check bypassed below
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match="does not match"):
    checkpointer.restore(_state(other))
  checkpointer.close()


def test_relative_workdir_becomes_absolute_for_orbax(tmp_path, monkeypatch):
  # Orbax refuses relative checkpoint paths; `--workdir=runs/x` must work.
  monkeypatch.chdir(tmp_path)
  assert checkpointing.checkpoint_dir("runs/x") == tmp_path / "runs/x/checkpoints"
  assert str(checkpointing.checkpoint_dir("gs://bucket/x")) == "gs://bucket/x/checkpoints"
