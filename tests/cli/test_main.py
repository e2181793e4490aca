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


def test_main_resumes_and_eval_results_keep_every_protocol_and_step(
    tmp_path, data_dir, pretrained):
  """Resume, then all / knn_eval at another step / linear_eval / all again:
  every result stays in eval_results.json. The later commands name no
  --config: the workdir's recorded one is used."""
  workdir = _copy(pretrained, tmp_path / "run")
  common = [*_common(data_dir), f"--workdir={workdir}"]
  train_lines = [m for m in read_metrics(workdir) if "loss" in m]
  assert [m["step"] for m in train_lines] == [1, 2, 3, 4]
  for m in train_lines:
    assert {"loss", "learning_rate", "images_per_sec"} <= set(m)
  assert list(pathlib.Path(workdir).glob("events.out.tfevents*"))

  # A linear evaluation of step 4 ...
  linear = run_main(*common, "--mode=linear_eval")
  assert linear.returncode == 0, linear.stderr[-3000:]
  assert "linear_eval" in linear.stdout and "ETA" in linear.stdout

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
  after_all = _results(workdir)
  assert list(after_all) == ["feature_probe@step_6", "fewshot@step_6",
                             "knn@step_6", "linear_eval@step_4"]
  for entry in after_all.values():
    assert 0.0 <= entry["top1"] <= 1.0
  for png in ("training_curves.png", "embedding_tsne.png"):
    assert pathlib.Path(workdir, png).read_bytes()[:4] == b"\x89PNG"

  # An evaluation of an earlier saved step, and the linear evaluation of
  # the newer one (a run of its own beside step 4's), each without --config.
  recorded = "No --config given: using the config recorded in"
  for args in (["--mode=knn_eval", "--config.eval.step=4"],
               ["--mode=linear_eval"]):
    result = run_main(f"--workdir={workdir}", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert recorded in result.stdout
  assert sorted(p.name for p in pathlib.Path(workdir, "linear_eval").iterdir()
               ) == ["step_000004", "step_000006"]
  results = _results(workdir)
  assert set(results) == {*after_all, "knn@step_4", "linear_eval@step_6"}
  assert {k: results[k] for k in after_all} == after_all

  # `all` again replaces its own entries only.
  again = run_main(f"--workdir={workdir}", "--mode=all")
  assert again.returncode == 0, again.stderr[-3000:]
  assert set(_results(workdir)) == set(results)
  assert _results(workdir)["linear_eval@step_6"] == results[
      "linear_eval@step_6"]


def test_a_workdir_without_a_recorded_config_needs_config(tmp_path):
  fresh = tmp_path / "fresh"
  result = run_main(f"--workdir={fresh}", "--mode=knn_eval")
  assert result.returncode == 2, result.stderr[-2000:]
  lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and "--config is required" in lines[0]
  assert "Traceback" not in result.stderr and not fresh.exists()


def _results(workdir):
  return json.loads(pathlib.Path(workdir, "eval_results.json").read_text())


def test_a_vit_pretrains_and_evaluates_through_main(pretrained_vit):
  steps = [m["step"] for m in read_metrics(pretrained_vit) if "loss" in m]
  assert steps == list(range(1, PRETRAINED_STEPS + 1))
  results = _results(pretrained_vit)
  for protocol in ("feature_probe", "knn", "fewshot"):
    assert 0.0 <= results[f"{protocol}@step_{PRETRAINED_STEPS}"]["top1"] <= 1.0


def test_every_mode_runs_through_main_fresh_workdirs_included(tmp_path,
                                                             data_dir,
                                                             pretrained):
  """The README's commands, as a user types them, each on its own workdir.

  --mode=pretrain ran on a fresh workdir in the `pretrained` fixture, and
  --mode=all (the default), knn_eval and linear_eval in
  test_main_resumes_and_eval_results_keep_every_protocol_and_step. The
  commands that read a trained workdir (export, hessian, finetune from it)
  run without --config: they use the one recorded there.
  """
  _run_every_mode(tmp_path, data_dir, pretrained, TINY)


@pytest.mark.slow
def test_every_mode_runs_through_main_with_a_vit(tmp_path, data_dir,
                                                 pretrained_vit):
  # Fine-tuning with the ViT's own recipe: layer-wise lr decay, drop path.
  _run_every_mode(tmp_path, data_dir, pretrained_vit, TINY_VIT,
                  finetune_flags=["--config.finetune.layer_decay=0.75",
                                  "--config.finetune.drop_path=0.1"])


def _run_every_mode(tmp_path, data_dir, pretrained, tiny, finetune_flags=()):
  pretrained = _copy(pretrained, tmp_path / "pretrained")
  common = _common(data_dir, tiny)
  for mode, protocol in (("fewshot_eval", "fewshot"),
                         ("feature_probe_eval", "feature_probe"),
                         ("linear_eval", "linear_eval")):
    result = run_main(*common, f"--workdir={pretrained}", f"--mode={mode}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{protocol}@step_{PRETRAINED_STEPS}" in _results(pretrained)
  exported = str(tmp_path / "encoder.msgpack")
  export = subprocess.run(
      [sys.executable, "-m", "mio_jax.cli.export", f"--workdir={pretrained}",
       f"--out={exported}"], cwd=REPO, env=child_env.child_env(2),
      capture_output=True, text=True, timeout=600)
  assert export.returncode == 0, export.stderr[-3000:]
  hessian = subprocess.run(
      [sys.executable, "-m", "mio_jax.cli.hessian", f"--workdir={pretrained}",
       "--data=synthetic", "--losses=mio", "--top_k=1", "--params=projector",
       "--batch_size=8", "--lanczos_steps=4", "--num_probes=1"], cwd=REPO,
      env=child_env.child_env(2), capture_output=True, text=True, timeout=600)
  assert hessian.returncode == 0, hessian.stderr[-3000:]
  for command in (export, hessian):
    assert "using the config recorded in" in command.stdout
  assert pathlib.Path(pretrained, "hessian", "hessian.json").exists()
  # Fresh workdirs: fine-tuning from the pretrained one, linear evaluation
  # of the exported file.
  finetuned = str(tmp_path / "finetuned")
  result = run_main(f"--workdir={finetuned}", "--mode=finetune",
                    f"--config.finetune.init_from={pretrained}",
                    *finetune_flags)
  assert result.returncode == 0, result.stderr[-3000:]
  assert list(_results(finetuned)) == ["finetune@step_2"]  # its own steps
  assert pathlib.Path(finetuned, "finetune", f"step_{PRETRAINED_STEPS:06d}",
                      "subset.json").exists()
  evaluated = str(tmp_path / "evaluated")
  result = run_main(*common, f"--workdir={evaluated}", "--mode=linear_eval",
                    f"--config.eval.encoder_file={exported}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert list(_results(evaluated)) == [  # the exported step
      f"linear_eval@step_{PRETRAINED_STEPS}"]
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


def _one_class_image_folder(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  folder = tmp_path / "images"
  (folder / "train" / "only_class").mkdir(parents=True)
  for i in range(4):
    Image.new("RGB", (8, 8), (i * 60, 0, 0)).save(
        folder / "train" / "only_class" / f"{i}.png")
  return [f"--config={REPO / 'configs' / 'image_folder.py'}",
          f"--config.dataset.path={folder}",
          f"--config.dataset.data_dir={tmp_path / 'tfds'}"]


@pytest.mark.parametrize("mistake, expected", [
    ("workdir_is_a_file", "is a file; give a directory"),
    ("misspelt_mode", "--mode='knn_evl' is not one of"),
    ("missing_init_from", "config.finetune.init_from="),
    ("missing_encoder_file", "config.eval.encoder_file="),
    ("one_class_image_folder", "single class folder"),
])
def test_mistakes_are_one_line_and_leave_no_empty_workdir(tmp_path, mistake,
                                                          expected):
  workdir = tmp_path / "runs" / "run"
  args = {
      "workdir_is_a_file": [f"--config={DIGITS}"],
      "misspelt_mode": [f"--config={DIGITS}", "--mode=knn_evl"],
      "missing_init_from": [f"--config={DIGITS}", "--mode=finetune",
                            f"--config.finetune.init_from={tmp_path / 'no'}"],
      "missing_encoder_file": [
          f"--config={DIGITS}", "--mode=linear_eval",
          f"--config.eval.encoder_file={tmp_path / 'no.msgpack'}"],
      "one_class_image_folder": _one_class_image_folder(tmp_path),
  }[mistake]
  if mistake == "workdir_is_a_file":
    workdir = tmp_path / "a_file"
    workdir.write_text("not a directory")
  result = run_main(*args, f"--workdir={workdir}")
  assert result.returncode == 2, result.stderr[-2000:]
  lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and expected in lines[0], result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  if mistake == "misspelt_mode":  # the flag the user typed, the closest mode
    assert "use e.g. --mode=knn_eval" in lines[0]
  if mistake == "workdir_is_a_file":
    assert workdir.is_file()
  else:
    assert not (tmp_path / "runs").exists()


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
