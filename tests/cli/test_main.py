"""The command line end to end on digits, resume through main, and usage errors."""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import time

import pytest

import child_env

REPO = pathlib.Path(__file__).resolve().parents[2]
DIGITS = str(REPO / "configs" / "digits.py")

# A tiny network and a few steps: the point is the plumbing, not accuracy.
TINY = [
    "--config.model.name=resnet_tiny",
    "--config.model.projector_hidden_dim=64",
    "--config.model.projector_output_dim=32",
    "--config.dataset.image_size=16",
    "--config.batch_size=64",
    "--config.eval.batch_size=128",
    "--config.feature_probe.epochs=3",
    "--config.fewshot.trials=2",
    "--config.eval.embedding_plot_points=100",
    "--config.checkpoint_every_steps=2",
    "--config.log_every_steps=1",
]
# The same with a two-block ViT of width 32 (patches of 4 px: 16 tokens).
TINY_VIT = [*TINY, "--config.model.name=vit_test",
            "--config.model.patch_size=4"]


def run_main(*args, env_extra=None, timeout=600):
  env = child_env.child_env(2, **(env_extra or {}))
  return subprocess.run([sys.executable, "-m", "mio_jax.main", *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def read_metrics(workdir):
  lines = pathlib.Path(workdir, "metrics.jsonl").read_text().splitlines()
  return [json.loads(line) for line in lines]


# Supervised protocols of a few steps each.
SUPERVISED = [
    "--config.linear_eval.batch_size=64",
    "--config.linear_eval.epochs=0.05",  # 1500 * 0.05 // 64 + 1 = 2 steps
    "--config.finetune.batch_size=32",
    "--config.finetune.epochs=0.3",  # 149 labelled images: 2 steps
]
PRETRAINED_STEPS = 4


def _common(data_dir, tiny=TINY):
  return [f"--config={DIGITS}", f"--config.dataset.data_dir={data_dir}",
          *tiny, *SUPERVISED]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, data_dir):
  """A workdir pretrained by `--mode=pretrain` on a fresh workdir.

  Shared, read only: each test copies it (each command here costs ~20 s,
  mostly importing JAX and TensorFlow and compiling).
  """
  workdir = str(tmp_path_factory.mktemp("pretrained") / "run")
  result = run_main(*_common(data_dir), f"--workdir={workdir}",
                    "--mode=pretrain",
                    f"--config.total_steps={PRETRAINED_STEPS}")
  assert result.returncode == 0, result.stderr[-3000:]
  # --mode=pretrain evaluates nothing.
  assert not pathlib.Path(workdir, "eval_results.json").exists()
  return workdir


@pytest.fixture(scope="module")
def pretrained_vit(tmp_path_factory, data_dir):
  """A tiny ViT's workdir after `--mode=all` (pretrain, then evaluate)."""
  workdir = str(tmp_path_factory.mktemp("pretrained_vit") / "run")
  result = run_main(*_common(data_dir, TINY_VIT), f"--workdir={workdir}",
                    f"--config.total_steps={PRETRAINED_STEPS}")
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def _copy(workdir, to):
  shutil.copytree(workdir, to)
  return str(to)


def test_main_pretrains_evaluates_and_resumes(tmp_path, data_dir, pretrained):
  workdir = _copy(pretrained, tmp_path / "run")
  common = [*_common(data_dir), f"--workdir={workdir}"]
  train_lines = [m for m in read_metrics(workdir) if "loss" in m]
  assert [m["step"] for m in train_lines] == [1, 2, 3, 4]
  for m in train_lines:
    assert {"loss", "learning_rate", "images_per_sec"} <= set(m)
  assert list(pathlib.Path(workdir).glob("events.out.tfevents*"))

  # Raising total_steps changes the schedule: refused unless asked for ...
  refused = run_main(*common, "--config.total_steps=6")
  assert refused.returncode == 2, refused.stderr[-3000:]
  assert "config.total_steps=4, this run has 6" in refused.stderr
  assert "Traceback" not in refused.stderr
  # ... and then continues from step 4 rather than starting over, and
  # (--mode=all, the default) evaluates the last step.
  second = run_main(*common, "--config.total_steps=6",
                    "--config.resume_allow_changes=total_steps")
  assert second.returncode == 0, second.stderr[-3000:]
  steps = [m["step"] for m in read_metrics(workdir) if "loss" in m]
  assert steps == [1, 2, 3, 4, 5, 6]
  results = _results(workdir)
  assert results["step"] == 6
  for key in ("feature_probe_top1", "knn_top1", "fewshot_top1"):
    assert 0.0 <= results[key] <= 1.0
  for png in ("training_curves.png", "embedding_tsne.png"):
    assert pathlib.Path(workdir, png).read_bytes()[:4] == b"\x89PNG"

  # An evaluation of an earlier saved step.
  third = run_main(*common, "--mode=knn_eval", "--config.eval.step=4")
  assert third.returncode == 0, third.stderr[-3000:]
  results = _results(workdir)
  assert results["step"] == 4 and "knn_top1" in results


def _results(workdir):
  return json.loads(pathlib.Path(workdir, "eval_results.json").read_text())


def test_a_vit_pretrains_and_evaluates_through_main(pretrained_vit):
  steps = [m["step"] for m in read_metrics(pretrained_vit) if "loss" in m]
  assert steps == list(range(1, PRETRAINED_STEPS + 1))
  results = _results(pretrained_vit)
  assert results["step"] == PRETRAINED_STEPS
  for key in ("feature_probe_top1", "knn_top1", "fewshot_top1"):
    assert 0.0 <= results[key] <= 1.0


def test_every_mode_runs_through_main_fresh_workdirs_included(tmp_path,
                                                             data_dir,
                                                             pretrained):
  """The README's commands, as a user types them, each on its own workdir.

  --mode=pretrain ran on a fresh workdir in the `pretrained` fixture, and
  --mode=all (the default) in test_main_pretrains_evaluates_and_resumes.
  """
  _run_every_mode(tmp_path, data_dir, pretrained, TINY)


@pytest.mark.slow
def test_every_mode_runs_through_main_with_a_vit(tmp_path, data_dir,
                                                 pretrained_vit):
  # Fine-tuning with the ViT's own recipe: layer-wise lr decay, drop path.
  _run_every_mode(tmp_path, data_dir, pretrained_vit,
                  [*TINY_VIT, "--config.finetune.layer_decay=0.75",
                   "--config.finetune.drop_path=0.1"])


def _run_every_mode(tmp_path, data_dir, pretrained, tiny):
  pretrained = _copy(pretrained, tmp_path / "pretrained")
  common = _common(data_dir, tiny)
  for mode, key in (("fewshot_eval", "fewshot_top1"),
                    ("feature_probe_eval", "feature_probe_top1"),
                    ("linear_eval", "linear_eval_top1")):
    result = run_main(*common, f"--workdir={pretrained}", f"--mode={mode}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert set(_results(pretrained)) == {"step", key,
                                         key.replace("top1", "top5")
                                         if mode != "fewshot_eval"
                                         else "fewshot_top1_std"}
  exported = str(tmp_path / "encoder.msgpack")
  export = subprocess.run(
      [sys.executable, "-m", "mio_jax.cli.export", f"--config={DIGITS}",
       f"--workdir={pretrained}", f"--out={exported}", *tiny], cwd=REPO,
      env=child_env.child_env(2), capture_output=True,
      text=True, timeout=600)
  assert export.returncode == 0, export.stderr[-3000:]
  # Fresh workdirs: fine-tuning from the pretrained one, linear evaluation
  # of the exported file.
  finetuned = str(tmp_path / "finetuned")
  result = run_main(*common, f"--workdir={finetuned}", "--mode=finetune",
                    f"--config.finetune.init_from={pretrained}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert _results(finetuned)["step"] == 2  # fine-tuning steps
  assert pathlib.Path(finetuned, "finetune", "subset.json").exists()
  evaluated = str(tmp_path / "evaluated")
  result = run_main(*common, f"--workdir={evaluated}", "--mode=linear_eval",
                    f"--config.eval.encoder_file={exported}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert _results(evaluated)["step"] == PRETRAINED_STEPS  # the exported step
  # A source that is not there: one line before any work.
  missing = run_main(*common, f"--workdir={tmp_path / 'x'}", "--mode=finetune",
                     f"--config.finetune.init_from={tmp_path / 'nothing'}")
  assert missing.returncode == 2 and "finetune.init_from" in missing.stderr
  assert "Traceback" not in missing.stderr


@pytest.mark.parametrize("override, key", [
    ("--config.temperature=0", "temperature"),
    ("--config.temperatur=0.3", "temperatur"),
    ("--config.batch_size=63", "batch_size"),
    ("--config.loss=infonce", "loss"),
    ("--config.total_steps=0", "total_steps"),
    ("--config.loss_block_size=48", "loss_block_size"),
    ("--mode=knn_eval", "no checkpoint"),
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


def test_missing_config_file_is_one_line_within_seconds(tmp_path):
  start = time.monotonic()
  result = run_main("--config=configs/no_such_file.py", f"--workdir={tmp_path}")
  assert result.returncode == 2
  lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and "no_such_file.py" in lines[0], result.stderr
  assert "Traceback" not in result.stderr
  assert time.monotonic() - start < 10


def test_help_needs_no_heavy_imports():
  """--help lists the flags without importing JAX, TensorFlow or the core."""
  result = subprocess.run(
      [sys.executable, "-X", "importtime", "-m", "mio_jax.main", "--help"],
      cwd=REPO, capture_output=True, text=True, timeout=60)
  assert "--workdir" in result.stdout and "--config" in result.stdout
  imported = {line.split("|")[-1].strip() for line in
              result.stderr.splitlines() if line.startswith("import time:")}
  assert "mio_jax.cli.main" in imported
  assert not imported & {"jax", "tensorflow", "mio_jax.experiment"}


def test_unprepared_dataset_is_one_line_with_the_prepare_command(tmp_path):
  start = time.monotonic()
  result = run_main(f"--config={REPO / 'configs' / 'cifar10.py'}",
                    f"--workdir={tmp_path / 'run'}",
                    f"--config.dataset.data_dir={tmp_path / 'tfds'}")
  assert result.returncode == 2, result.stderr[-2000:]
  lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and "python -m mio_jax.cli.prepare --dataset=cifar10" \
      in lines[0], result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert time.monotonic() - start < 60  # no network retries (10 s when idle)
