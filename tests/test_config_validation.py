"""Config checks: each module's rule reported under its config key."""
import json
import pathlib

import pytest

from mio_jax import config_base
from mio_jax import config_validation

REPO = pathlib.Path(__file__).resolve().parents[1]
DIGITS = str(REPO / "configs" / "digits.py")


def digits_config():
  return config_base.load_config_file(DIGITS)


@pytest.mark.parametrize("key, value, fragment", [
    ("temperature", -0.5, "config.temperature=-0.5"),
    ("negative_temperature", 0.0, "config.negative_temperature=0.0"),
    ("loss", "simclr", "config.loss='simclr'"),
    ("mode", "train", "config.mode='train'"),
    ("batch_size", 100, "not divisible by the device count (8)"),
    ("total_steps", -1, "leave --config.total_steps unset"),
    ("optimizer.base_lr", 0.0, "--config.optimizer.base_lr"),
    ("model.stem", "vit", "--config.model.stem=cifar"),
    ("resume_allow_changes", "model.name", "config.resume_allow_changes"),
    ("dtype", "float16", "config.dtype='float16'"),
    ("model.name", "vgg", "config.model.name='vgg'"),
    ("dataset.name", "mnist", "config.dataset.name='mnist'"),
    ("optimizer.name", "rmsprop", "config.optimizer.name='rmsprop'"),
    ("loss_block_size", 0, "config.loss_block_size=0"),
    ("loss_block_size", 100, "config.loss_block_size=100 does not divide"),
    # 256 images over 8 devices: 32 per device, which 16 tiles, 64 not.
    ("loss_block_size", 64, "the 32 images per device (batch 256 over 8"),
    ("finetune.layer_decay", 0.65,
     "config.finetune.layer_decay=0.65 applies to ViTs only"),
    ("finetune.drop_path", 0.1, "--config.finetune.drop_path=0.0"),
    ("finetune.layer_decay", 0.0, "config.finetune.layer_decay=0.0 must be"),
])
def test_validate_config_names_key_value_and_fix(key, value, fragment):
  config = digits_config()
  holder = config
  *parents, leaf = key.split(".")
  for p in parents:
    holder = holder[p]
  holder[leaf] = value
  with pytest.raises(config_validation.ConfigError, match="^.*$") as err:
    config_validation.validate_config(config, device_count=8)
  message = str(err.value)
  assert fragment in message and "\n" not in message
  assert "--config." in message or "e.g." in message


def test_vit_patch_size_must_divide_the_image_size():
  config = digits_config()  # 32 px
  config.model.name = "vit_test"
  config.model.patch_size = 6
  with pytest.raises(config_validation.ConfigError) as err:
    config_validation.validate_config(config, device_count=8)
  assert str(err.value) == (
      "config.model.patch_size=6 does not divide the image size 32; use a "
      "patch size that divides dataset.image_size (e.g. "
      "--config.model.patch_size=4) or change the image size")
  config.model.patch_size = 8
  config_validation.validate_config(config, device_count=8)


def test_shipped_configs_are_valid(tmp_path):
  for name in ("cats", "dogs"):  # what configs/image_folder.py points at
    (tmp_path / "train" / name).mkdir(parents=True)
  for path in sorted((REPO / "configs").glob("*.py")):
    config = config_base.load_config_file(path)
    if config.dataset.name == "image_folder":
      config.dataset.path = str(tmp_path)
    config_validation.validate_config(config, device_count=8)


def test_bad_augmentation_value_is_a_config_error():
  config = digits_config()
  config.augment.grayscale_prob = 1.5
  with pytest.raises(config_validation.ConfigError, match="augment.grayscale_prob=1.5"):
    config_validation.validate_config(config, device_count=1)


def test_workdir_with_another_models_checkpoint_is_a_config_error(tmp_path):
  from mio_jax import checkpointing  # pylint: disable=g-import-not-at-top
  trained = digits_config()
  trained.model.name = "resnet50"
  directory = checkpointing.checkpoint_dir(str(tmp_path))
  (directory / "3").mkdir(parents=True)  # a saved step
  (directory / checkpointing.METADATA_FILE).write_text(json.dumps(
      {"settings": checkpointing.run_settings(trained)}))
  config_validation.validate_workdir(str(tmp_path), trained)  # same model: fine
  with pytest.raises(config_validation.ConfigError,
                     match="another model.*resnet50"):
    config_validation.validate_workdir(str(tmp_path), digits_config())
  # Another recipe: refused for training, fine for an evaluation.
  other_seed = digits_config()
  other_seed.model.name = "resnet50"
  other_seed.seed = 7
  with pytest.raises(config_validation.ConfigError,
                     match="config.seed=0, this run has 7"):
    config_validation.validate_workdir(str(tmp_path), other_seed)
  other_seed.mode = "knn_eval"
  config_validation.validate_workdir(str(tmp_path), other_seed)
