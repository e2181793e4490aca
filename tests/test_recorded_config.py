"""A trained workdir's recorded config, rebuilt as a ConfigDict."""
import importlib.util
import pathlib

import pytest

from mio_jax import checkpointing
from mio_jax import config_base
from mio_jax import files
from mio_jax import recorded_config
from mio_jax import resume_guard

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def _config(name):
  spec = importlib.util.spec_from_file_location(name, CONFIGS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _record(workdir, metadata):
  files.write_json(recorded_config.metadata_path(str(workdir)), metadata)


@pytest.mark.parametrize("name", ["digits", "cifar10_public_code",
                                  "imagenet100"])
def test_the_recorded_config_is_rebuilt_key_for_key(tmp_path, name):
  config = _config(name)
  config.total_steps = 80
  _record(tmp_path, {"format": resume_guard.FORMAT,
                     "settings": dict(resume_guard.pretraining_record(
                         config, steps_per_epoch=5,
                         prepared_dataset="x").settings)})
  rebuilt = recorded_config.get_config(str(tmp_path))
  assert resume_guard.flat_config(rebuilt) == resume_guard.flat_config(config)
  assert rebuilt.augment.crop_scale == tuple(config.augment.crop_scale)


def test_a_key_the_record_lacks_keeps_its_default(tmp_path):
  settings = dict(resume_guard.pretraining_record(_config("digits")).settings)
  del settings["knn.k"]
  settings["a_key_of_an_earlier_build"] = 1
  _record(tmp_path, {"format": resume_guard.FORMAT, "settings": settings})
  rebuilt = recorded_config.get_config(str(tmp_path))
  assert rebuilt.knn.k == config_base.base_config().knn.k
  assert rebuilt.model.width_multiplier == 0.25  # digits'


def test_no_record_or_an_earlier_builds_partial_one_is_no_config(tmp_path):
  assert recorded_config.recorded_config(str(tmp_path)) is None
  with pytest.raises(recorded_config.NoRecordedConfigError):
    recorded_config.get_config(str(tmp_path))
  _record(tmp_path, {"settings": {"loss": "mio"}})  # the second build's
  assert recorded_config.recorded_config(str(tmp_path)) is None
  assert recorded_config.metadata_path(str(tmp_path)) == (
      checkpointing.checkpoint_dir(str(tmp_path)) / checkpointing.METADATA_FILE)
