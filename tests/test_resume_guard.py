"""The resume guard records the whole recipe and refuses what it does not allow."""
import jax
import jax.numpy as jnp
import pytest

from mio_jax import checkpointing
from mio_jax import config_base
from mio_jax import config_validation
from mio_jax import resume_guard
from mio_jax import pretraining


def _config(**overrides):
  config = config_base.base_config()
  for key, value in overrides.items():
    section, _, name = key.rpartition(".")
    (config[section] if section else config)[name] = value
  return config


def _settings(config, **derived):
  return dict(resume_guard.pretraining_record(config, **derived).settings)


def _record(workdir, config, **derived):
  directory = checkpointing.checkpoint_dir(str(workdir))
  directory.mkdir(parents=True, exist_ok=True)
  resume_guard.files.write_json(
      directory / checkpointing.METADATA_FILE,
      {"format": resume_guard.FORMAT,
       "settings": _settings(config, **derived)})


def _check(workdir, config, **derived):
  return checkpointing.check_resume(
      str(workdir), resume_guard.pretraining_record(config, **derived))


# Each accepted silently by the guard's former key list (issue 19).
_GUARDED = [
    ("optimizer.lr_scaling", "none"), ("optimizer.warmup_epochs", 3.0),
    ("optimizer.warmup_start_lr", 0.1), ("optimizer.final_lr", 0.01),
    ("optimizer.schedule_epochs", 400.0), ("optimizer.weight_decay", 1e-4),
    ("optimizer.momentum", 0.8), ("optimizer.trust_coefficient", 0.01),
    ("augment.crop_scale", (0.2, 1.0)), ("augment.hflip", False),
    ("augment.color_jitter_strength", 1.0), ("augment.on_device", True),
    ("bn_views", "per_view"), ("dtype", "bfloat16"),
    ("dataset.test_fraction", 0.2), ("online_probe.lr", 0.5),
    ("loss_block_size", 8),
]


@pytest.mark.parametrize("key,value", _GUARDED)
def test_every_recipe_key_is_guarded(tmp_path, key, value):
  _record(tmp_path, _config())
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match=f"config.{key}=.*resume_allow_changes={key}"):
    _check(tmp_path, _config(**{key: value}))
  _check(tmp_path, _config(
      **{key: value, "resume_allow_changes": key}))


@pytest.mark.parametrize("key,value", [
    ("log_every_steps", 7), ("checkpoint_every_steps", 9),
    ("keep_checkpoints", 1), ("online_eval_every_steps", 100),
    ("mode", "pretrain"), ("resume_allow_changes", "seed"),
    ("eval.batch_size", 64), ("knn.k", 20), ("feature_probe.epochs", 3),
    ("linear_eval.epochs", 5.0), ("finetune.label_fraction", 0.01),
    ("dataset.data_dir", "/elsewhere"), ("dataset.prefetch", 4),
    ("logging.wandb_mode", "online")])
def test_cadence_evaluation_and_paths_may_change_freely(tmp_path, key, value):
  _record(tmp_path, _config())
  assert _check(tmp_path, _config(**{key: value})) == []


def test_a_key_the_record_predates_is_compared_with_its_default(tmp_path):
  directory = checkpointing.checkpoint_dir(str(tmp_path))
  directory.mkdir(parents=True)
  settings = _settings(_config())
  del settings["optimizer.final_lr"]  # as if added to the config later
  resume_guard.files.write_json(
      directory / checkpointing.METADATA_FILE,
      {"format": resume_guard.FORMAT, "settings": settings})
  _check(tmp_path, _config())  # its default: fine
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match="config.optimizer.final_lr=0.0, this run has 0.1"):
    _check(tmp_path, _config(**{"optimizer.final_lr": 0.1}))


def test_other_data_stop_a_resume_by_their_derived_values(tmp_path):
  _record(tmp_path, _config(), steps_per_epoch=93,
          prepared_dataset="image_folder/cats_32px_abc")
  _check(tmp_path, _config(), steps_per_epoch=93,
                             prepared_dataset="image_folder/cats_32px_abc")
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match=r"made with prepared_dataset='image_folder/cats_"):
    _check(tmp_path, _config(), steps_per_epoch=93,
                               prepared_dataset="image_folder/cats_32px_def")
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match=r"made with steps_per_epoch=93, this run has 94"):
    _check(tmp_path, _config(), steps_per_epoch=94)


def test_another_version_of_a_tfds_set_stops_a_resume(tmp_path):
  # dataset.data_dir may change freely: the data found there must not.
  identity = "cifar10@3.0.2 (test 10000, train 50000)"
  _record(tmp_path, _config(), prepared_dataset=identity)
  _check(tmp_path, _config(), prepared_dataset=identity)
  for other in ("cifar10@3.0.1 (test 10000, train 50000)",
                "cifar10@3.0.2 (test 10000, train 40000)"):
    with pytest.raises(checkpointing.CheckpointMismatchError,
                       match=r"made with prepared_dataset='cifar10@3.0.2"):
      _check(tmp_path, _config(), prepared_dataset=other)


def test_a_record_of_the_bare_tfds_name_compares_the_name(tmp_path):
  # Records made before the version and sizes were recorded.
  _record(tmp_path, _config(), prepared_dataset="cifar10")
  _check(tmp_path, _config(),
         prepared_dataset="cifar10@3.0.2 (test 10000, train 50000)")
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match=r"made with prepared_dataset='cifar10'"):
    _check(tmp_path, _config(),
           prepared_dataset="cifar100@3.0.2 (test 10000, train 50000)")


@pytest.mark.parametrize("key", ["online_probe.enabled", "optimizer.name",
                                 "model.name"])
def test_a_change_of_the_saved_states_structure_cannot_be_allowed(key):
  config = _config(resume_allow_changes=key)
  with pytest.raises(config_validation.ConfigError,
                     match=f"resume_allow_changes='{key}' changes the "
                     "structure of the saved state"):
    config_validation.validate_config(config, device_count=1)


def test_gradient_clipping_may_change_its_norm_but_not_appear(tmp_path):
  _record(tmp_path, _config(**{"optimizer.grad_clip_norm": 1.0}))
  allowed = "optimizer.grad_clip_norm"
  _check(tmp_path, _config(**{
      "optimizer.grad_clip_norm": 2.0, "resume_allow_changes": allowed}))
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match="cannot change from 1.0 to None on resume"):
    _check(tmp_path, _config(**{
        "optimizer.grad_clip_norm": None, "resume_allow_changes": allowed}))


def test_an_unknown_allowed_key_is_one_line():
  with pytest.raises(config_validation.ConfigError,
                     match="resume_allow_changes='total_step' is not a "
                     "config key"):
    config_validation.validate_config(
        _config(resume_allow_changes="total_step"), device_count=1)


def test_an_earlier_builds_record_is_read_and_upgraded_on_the_next_save(
    tmp_path):
  config = _config(total_steps=None)
  directory = checkpointing.checkpoint_dir(str(tmp_path))
  directory.mkdir(parents=True)
  # The second build's record: chosen keys, the effective run length.
  resume_guard.files.write_json(directory / checkpointing.METADATA_FILE, {
      "settings": {"model.name": "resnet18", "batch_size": 512,
                   "total_steps": 600, "steps_per_epoch": 3},
      "changes": [{"key": "total_steps", "from": 300, "to": 600,
                   "from_step": 10}]})
  _check(tmp_path, config, steps_per_epoch=3,
                             total_steps=600)
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match="config.total_steps=600, this run has 900"):
    _check(tmp_path, config, steps_per_epoch=3,
                               total_steps=900)
  state = pretraining.TrainState(step=jnp.asarray(11, jnp.int32),
                                 params={"w": jnp.zeros(2)}, batch_stats={},
                                 opt_state={}, rng=jax.random.key_data(
                                     jax.random.key(0)))
  with checkpointing.Checkpointer(
      str(tmp_path), keep=1, record=resume_guard.pretraining_record(
          config, steps_per_epoch=3, total_steps=600)) as checkpointer:
    checkpointer.save(state)
  metadata = checkpointing.read_metadata(str(tmp_path))
  assert metadata["format"] == resume_guard.FORMAT
  assert metadata["settings"]["optimizer.weight_decay"] == 1e-6
  assert metadata["changes"][0]["to"] == 600  # the history is kept
