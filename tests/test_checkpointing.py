import json

import jax
import numpy as np
import pytest

from mio_jax import checkpointing
from mio_jax import mesh as mesh_lib
from mio_jax import pretraining
from mio_jax import resume_guard
from pretrain_runner import (assert_trees_equal, build_tiny_recipe,
                             open_checkpointer, tiny_config, tiny_recipe)


def _state(**overrides):
  return pretraining.init_state(tiny_recipe(**overrides))


def _pretraining(config):
  return resume_guard.pretraining_record(config)


def _architecture(config):
  return resume_guard.architecture_record(config)


def test_save_restore_roundtrip_is_exact(tmp_path):
  config = tiny_config()
  fresh = _state()
  # Every leaf differs from the fresh state the restore starts from.
  saved = jax.tree.map(lambda x: x + 1, fresh).replace(step=np.int32(7))
  checkpointer = open_checkpointer(tmp_path, config)
  assert checkpointer.save(saved)
  assert not checkpointer.save(saved)  # the same step again: skipped, no error
  checkpointer.close()

  reopened = open_checkpointer(tmp_path, config)
  assert reopened.latest_step() == 7
  restored = reopened.restore(_state())
  reopened.close()
  assert_trees_equal(saved, restored)  # includes rng key data and opt_state
  assert restored.rng.dtype == np.uint32
  assert restored.params["projector"]["dense1"]["kernel"].sharding \
      .is_fully_replicated


def test_keeps_only_the_last_checkpoints(tmp_path):
  config = tiny_config(keep_checkpoints=2)
  state = _state()
  checkpointer = open_checkpointer(tmp_path, config)
  for step in (2, 4, 6):
    checkpointer.save(state.replace(step=np.int32(step)))
    checkpointer.wait()
  assert checkpointer.all_steps() == [4, 6]
  checkpointer.close()


def test_checkpoints_of_another_model_are_refused(tmp_path):
  config = tiny_config()
  checkpointer = open_checkpointer(tmp_path, config)
  checkpointer.save(_state())
  checkpointer.close()
  metadata = checkpointing.read_metadata(str(tmp_path))
  assert metadata["settings"] == dict(_pretraining(config).settings)

  other = tiny_config()
  other.model.width_multiplier = 1.0
  assert resume_guard.differences(
      metadata, _pretraining(other).settings,
      resume_guard.ARCHITECTURE_KEYS.__contains__) == [
          ("model.width_multiplier", 0.5, 1.0)]
  checkpointing.check_resume(str(tmp_path), _pretraining(config))  # fine
  for record in (_architecture, _pretraining):
    with pytest.raises(checkpointing.CheckpointMismatchError,
                       match="another model.*width_multiplier=0.5.*1.0"):
      checkpointing.check_resume(str(tmp_path), record(other))
  with pytest.raises(checkpointing.CheckpointMismatchError):
    checkpointing.restore_variables(
        str(tmp_path), checkpointing.EncoderArchitecture.from_config(other),
        mesh_lib.make_data_mesh())
  # A recipe change is refused for training, fine for evaluation.
  other = tiny_config(seed=3)
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match="config.seed=0, this run has 3"):
    checkpointing.check_resume(str(tmp_path), _pretraining(other))
  checkpointing.check_resume(str(tmp_path), _architecture(other))


def test_first_build_metadata_is_still_understood(tmp_path):
  directory = checkpointing.checkpoint_dir(str(tmp_path))
  directory.mkdir(parents=True)
  config = tiny_config()
  (directory / checkpointing.METADATA_FILE).write_text(json.dumps(
      {"model": config.model.to_dict(), "loss": "bce", "optimizer": "lars"}))
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match="config.loss='bce', this run has 'mio'"):
    checkpointing.check_resume(str(tmp_path), _pretraining(config))
  checkpointing.check_resume(str(tmp_path), _architecture(config))


def test_restore_variables_of_any_saved_step(tmp_path):
  config = tiny_config()
  architecture = checkpointing.EncoderArchitecture.from_config(config)
  mesh = mesh_lib.make_data_mesh()
  with pytest.raises(checkpointing.NoCheckpointError, match="pretrain first"):
    checkpointing.restore_variables(str(tmp_path), architecture, mesh)
  assert not checkpointing.checkpoint_dir(str(tmp_path)).exists()
  checkpointer = open_checkpointer(tmp_path, config)
  states = {step: jax.tree.map(lambda x, s=step: x + s, _state()).replace(
      step=np.int32(step)) for step in (3, 5)}
  for state in states.values():
    checkpointer.save(state)
  checkpointer.close()
  assert checkpointing.saved_steps(str(tmp_path)) == [3, 5]
  for step in (None, 3):
    restored_step, variables = checkpointing.restore_variables(
        str(tmp_path), architecture, mesh, step=step)
    assert restored_step == (5 if step is None else 3)
    assert set(variables) == {"params", "batch_stats"}
    assert_trees_equal(variables, states[restored_step].variables)
  with pytest.raises(checkpointing.NoCheckpointError,
                     match="step 4 is not saved.*saved steps: 3, 5"):
    checkpointing.restore_variables(str(tmp_path), architecture, mesh,
                                    step=4)


def test_structure_mismatch_at_restore_is_a_clear_error(tmp_path):
  config = tiny_config()
  checkpointer = open_checkpointer(tmp_path, config)
  checkpointer.save(_state())
  checkpointer.wait()
  # Restoring into another model's state directly (the settings check that
  # would refuse it first is bypassed): the shapes differ.
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match="does not match"):
    checkpointer.restore(pretraining.init_state(
        build_tiny_recipe(_other_config())))
  checkpointer.close()


def _other_config():
  config = tiny_config()
  config.model.projector_output_dim = 8
  return config


def test_relative_workdir_becomes_absolute_for_orbax(tmp_path, monkeypatch):
  # Orbax refuses relative checkpoint paths; `--workdir=runs/x` must work.
  monkeypatch.chdir(tmp_path)
  assert checkpointing.checkpoint_dir("runs/x") == tmp_path / "runs/x/checkpoints"
  assert str(checkpointing.checkpoint_dir("gs://bucket/x")) == "gs://bucket/x/checkpoints"
