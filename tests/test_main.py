"""The command line end to end on digits, resume through main, and usage errors."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from mio_jax import config_base
from mio_jax import config_validation

REPO = pathlib.Path(__file__).resolve().parents[1]
DIGITS = str(REPO / "configs" / "digits.py")

# A tiny network and a few steps: the point is the plumbing, not accuracy.
TINY = [
    "--config.model.name=resnet_tiny",
    "--config.model.projector_hidden_dim=64",
    "--config.model.projector_output_dim=32",
    "--config.dataset.image_size=16",
    "--config.batch_size=64",
    "--config.eval.batch_size=128",
    "--config.eval.linear_epochs=3",
    "--config.eval.fewshot_trials=2",
    "--config.eval.embedding_plot_points=100",
    "--config.checkpoint_every_steps=2",
    "--config.log_every_steps=1",
]


def run_main(*args, env_extra=None, timeout=600):
  env = dict(os.environ)
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
             TF_CPP_MIN_LOG_LEVEL="2", TF_ENABLE_ONEDNN_OPTS="0")
  env.update(env_extra or {})
  return subprocess.run([sys.executable, "-m", "mio_jax.main", *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def read_metrics(workdir):
  lines = pathlib.Path(workdir, "metrics.jsonl").read_text().splitlines()
  return [json.loads(line) for line in lines]


def test_main_pretrains_evaluates_and_resumes(tmp_path, data_dir):
  workdir = str(tmp_path / "run")
  common = [f"--config={DIGITS}", f"--workdir={workdir}",
            f"--config.dataset.data_dir={data_dir}", *TINY]
  first = run_main(*common, "--config.total_steps=4")
  assert first.returncode == 0, first.stderr[-3000:]
  results = json.loads(pathlib.Path(workdir, "eval_results.json").read_text())
  assert results["step"] == 4
  for key in ("linear_top1", "knn_top1", "fewshot_top1"):
    assert 0.0 <= results[key] <= 1.0
  train_lines = [m for m in read_metrics(workdir) if "loss" in m]
  assert [m["step"] for m in train_lines] == [1, 2, 3, 4]
  for m in train_lines:
    assert {"loss", "learning_rate", "images_per_sec"} <= set(m)
  for png in ("training_curves.png", "embedding_tsne.png"):
    assert pathlib.Path(workdir, png).read_bytes()[:4] == b"\x89PNG"
  assert list(pathlib.Path(workdir).glob("events.out.tfevents*"))

  # Raising total_steps continues from step 4 rather than starting over.
  second = run_main(*common, "--config.total_steps=6", "--mode=pretrain")
  assert second.returncode == 0, second.stderr[-3000:]
  steps = [m["step"] for m in read_metrics(workdir) if "loss" in m]
  assert steps == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("override, key", [
    ("--config.temperature=0", "temperature"),
    ("--config.temperatur=0.3", "temperatur"),
    ("--config.batch_size=63", "batch_size"),
    ("--config.loss=infonce", "loss"),
])
def test_usage_errors_are_one_line_with_status_2(tmp_path, override, key):
  result = run_main(f"--config={DIGITS}", f"--workdir={tmp_path}", override)
  assert result.returncode == 2, result.stderr[-2000:]
  lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and key in lines[0], result.stderr[-2000:]
  assert "Traceback" not in result.stderr


def test_unwritable_workdir_is_a_usage_error(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  result = run_main(f"--config={DIGITS}", f"--workdir={blocker}/run")
  assert result.returncode == 2
  assert "--workdir" in result.stderr and "Traceback" not in result.stderr


def digits_config():
  return config_base.load_config_file(DIGITS)


@pytest.mark.parametrize("key, value, fragment", [
    ("temperature", -0.5, "config.temperature=-0.5"),
    ("negative_temperature", 0.0, "config.negative_temperature=0.0"),
    ("loss", "simclr", "config.loss='simclr'"),
    ("mode", "train", "config.mode='train'"),
    ("batch_size", 100, "divisible by the 8 devices"),
    ("dtype", "float16", "config.dtype='float16'"),
    ("model.name", "vgg", "config.model.name='vgg'"),
    ("dataset.name", "mnist", "config.dataset.name='mnist'"),
    ("optimizer.name", "rmsprop", "config.optimizer.name='rmsprop'"),
    ("loss_block_size", 0, "config.loss_block_size=0"),
    ("loss_block_size", 100, "config.loss_block_size=100 does not divide"),
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


def test_shipped_configs_are_valid():
  for path in sorted((REPO / "configs").glob("*.py")):
    config = config_base.load_config_file(path)
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
  directory.mkdir(parents=True)
  (directory / checkpointing.METADATA_FILE).write_text(
      json.dumps(checkpointing.run_metadata(trained)))
  config_validation.validate_workdir(str(tmp_path), trained)  # same model: fine
  with pytest.raises(config_validation.ConfigError,
                     match="checkpoint of another model.*resnet50"):
    config_validation.validate_workdir(str(tmp_path), digits_config())
