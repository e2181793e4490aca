"""Tests of MetricLogger: jsonl, TensorBoard events, terminal line, processes,
and the optional Weights & Biases run (a fake `wandb` module; the real one
offline when it is installed)."""
import glob
import importlib.machinery
import json
import os
import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from mio_jax import config_base
from mio_jax import errors
from mio_jax import metric_logging
from mio_jax.metric_logging import MetricLogger
from mio_jax.metric_logging import WandbSettings


class _FakeClock:
  """Seconds that the test advances by hand."""

  def __init__(self, start=1000.0):
    self.now = start

  def __call__(self):
    return self.now


def _read_jsonl(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _read_events(workdir):
  """{tag: [(step, value), ...]} from the TensorBoard event files."""
  scalars = {}
  for name in os.listdir(workdir):
    if not name.startswith("events.out.tfevents"):
      continue
    for event in tf.compat.v1.train.summary_iterator(
        os.path.join(workdir, name)):
      for value in event.summary.value:
        assert value.metadata.plugin_data.plugin_name == "scalars"
        scalars.setdefault(value.tag, []).append(
            (event.step, float(tf.make_ndarray(value.tensor))))
  return scalars


def test_logger_writes_jsonl_tensorboard_and_progress(tmp_path, capsys):
  clock = _FakeClock()
  workdir = str(tmp_path / "run")
  logger = MetricLogger(workdir, total_steps=1000, clock=clock)
  clock.now += 30.0  # compilation: must not count as training time
  logger.log(100, {"loss": jnp.float32(1.5), "learning_rate": np.float64(0.1),
                   "pair_accuracy": 0.75, "images_per_sec": 2.0})
  clock.now += 10.0
  logger.log(200, {"loss": jnp.array(1.25), "learning_rate": 0.05,
                   "images_per_sec": 640.0})
  clock.now += 10.0
  logger.log(300, {"loss": 1.0, "learning_rate": 0.025,
                   "images_per_sec": 640.0})
  logger.log_eval(300, {"knn": {"top1": 0.5, "top5": 0.9}, "linear_top1": 0.6})
  logger.close()

  records = _read_jsonl(workdir)
  assert [r["step"] for r in records] == [100, 200, 300, 300]
  assert records[0]["loss"] == 1.5 and records[0]["pair_accuracy"] == 0.75
  assert [r["images_per_sec"] for r in records[:3]] == [2.0, 640.0, 640.0]
  assert records[3] == {"step": 300, "eval/knn/top1": 0.5,
                        "eval/knn/top5": 0.9, "eval/linear_top1": 0.6}

  events = _read_events(workdir)
  assert events["loss"] == [(100, 1.5), (200, 1.25), (300, 1.0)]
  assert events["eval/knn/top1"] == [(300, 0.5)]

  lines = capsys.readouterr().out.strip().splitlines()
  assert lines[0].startswith("step 100/1000") and "ETA -" in lines[0]
  # 200 steps in 20 s since the first logged step: 700 steps left -> 70 s.
  assert "step 300/1000" in lines[2] and "loss 1.0000" in lines[2]
  assert "640.0 img/s" in lines[2] and "ETA 0:01:10" in lines[2]
  assert "eval/knn/top1 0.5000" in lines[3]


def test_logger_appends_on_resume(tmp_path):
  workdir = str(tmp_path)
  with MetricLogger(workdir, total_steps=10) as logger:
    logger.log(1, {"loss": 2.0})
  with MetricLogger(workdir, total_steps=10) as logger:
    logger.log(2, {"loss": 1.0})
  assert [r["step"] for r in _read_jsonl(workdir)] == [1, 2]


def test_logger_rejects_non_scalar_metric(tmp_path):
  with MetricLogger(str(tmp_path), total_steps=10) as logger:
    with pytest.raises(ValueError, match="'loss' must be a scalar"):
      logger.log(1, {"loss": np.ones(3)})


def test_non_main_process_writes_nothing(tmp_path, capsys):
  workdir = str(tmp_path / "other")
  logger = MetricLogger(workdir, total_steps=10, is_main_process=False)
  logger.log(1, {"loss": 1.0, "learning_rate": 0.1})
  logger.log_eval(1, {"top1": 0.5})
  logger.close()
  assert not os.path.exists(workdir)
  assert capsys.readouterr().out == ""


# ---- Weights & Biases ----------------------------------------------------


class _FakeRun:
  """Records what MetricLogger asks of a wandb run."""

  def __init__(self, init_kwargs):
    self.init_kwargs = init_kwargs
    self.logged = []
    self.metrics = []
    self.finished = False

  def define_metric(self, name, **kwargs):
    self.metrics.append((name, kwargs))

  def log(self, values):
    self.logged.append(dict(values))

  def finish(self):
    self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch):
  """A `wandb` module in sys.modules; .runs lists the runs it started."""
  module = types.ModuleType("wandb")
  module.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
  module.runs = []

  def init(**kwargs):
    module.runs.append(_FakeRun(kwargs))
    return module.runs[-1]

  module.init = init
  monkeypatch.setitem(sys.modules, "wandb", module)
  return module


def test_wandb_run_gets_every_log_with_step_config_and_mode(tmp_path,
                                                            fake_wandb):
  workdir = str(tmp_path)
  settings = WandbSettings(project="mio", entity="me", mode="offline",
                           run_config={"loss": "mio", "model": {"depth": 18}})
  with MetricLogger(workdir, total_steps=10, wandb=settings) as logger:
    logger.log(1, {"loss": jnp.float32(2.0), "learning_rate": 0.1})
    logger.log_eval(1, {"knn": {"top1": 0.5}})
  (run,) = fake_wandb.runs
  assert run.logged == [{"step": 1, "loss": 2.0, "learning_rate": 0.1},
                        {"step": 1, "eval/knn/top1": 0.5}]
  kwargs = run.init_kwargs
  assert (kwargs["project"], kwargs["entity"], kwargs["mode"]) == (
      "mio", "me", "offline")
  assert kwargs["config"] == {"loss": "mio", "model": {"depth": 18}}
  assert kwargs["dir"] == workdir  # offline files stay with the run
  assert ("*", {"step_metric": "step"}) in run.metrics
  assert run.finished
  # metrics.jsonl and the TensorBoard events are still written.
  assert [r["step"] for r in _read_jsonl(workdir)] == [1, 1]
  assert _read_events(workdir)["loss"] == [(1, 2.0)]


def test_resumed_logger_continues_the_same_wandb_run(tmp_path, fake_wandb):
  settings = WandbSettings(project="mio")
  for step in (1, 2):
    with MetricLogger(str(tmp_path), total_steps=10, wandb=settings) as logger:
      logger.log(step, {"loss": 1.0})
  first, second = fake_wandb.runs
  assert first.init_kwargs["id"] == second.init_kwargs["id"]
  assert second.init_kwargs["resume"] == "allow"
  other = tmp_path / "other"
  MetricLogger(str(other), total_steps=1, wandb=settings).close()
  assert fake_wandb.runs[-1].init_kwargs["id"] != first.init_kwargs["id"]


def test_wandb_is_off_by_default_and_on_other_processes(tmp_path, fake_wandb):
  config = config_base.base_config()
  assert metric_logging.wandb_settings(config) is None
  MetricLogger(str(tmp_path / "a"), total_steps=1).close()
  logger = MetricLogger(str(tmp_path / "b"), total_steps=1,
                        is_main_process=False,
                        wandb=WandbSettings(project="mio"))
  logger.log(1, {"loss": 1.0})
  logger.close()
  assert not fake_wandb.runs


def test_wandb_settings_record_the_whole_config(fake_wandb):
  del fake_wandb  # installed: the settings check finds it
  config = config_base.base_config()
  config.logging.wandb_project = "mio"
  config.logging.wandb_mode = "online"
  settings = metric_logging.wandb_settings(config)
  assert (settings.project, settings.entity, settings.mode) == (
      "mio", None, "online")
  assert settings.run_config == config.to_dict()


def test_unknown_wandb_mode_names_the_key(fake_wandb):
  del fake_wandb
  config = config_base.base_config()
  config.logging.wandb_project = "mio"
  config.logging.wandb_mode = "offlne"
  with pytest.raises(errors.InvalidValueError, match="wandb_mode='offlne'"):
    metric_logging.wandb_settings(config)


def test_missing_wandb_says_how_to_install_it(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb fails
  config = config_base.base_config()
  config.logging.wandb_project = "mio"
  install = f"pip install wandb=={metric_logging.WANDB_VERSION}"
  with pytest.raises(metric_logging.WandbNotInstalledError, match=install):
    metric_logging.check_config(config.logging)
  with pytest.raises(errors.UserError, match=install):
    MetricLogger(str(tmp_path), total_steps=1,
                 wandb=WandbSettings(project="mio"))


def test_real_wandb_writes_an_offline_run(tmp_path, monkeypatch):
  pytest.importorskip("wandb")
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_SILENT", "true")
  monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))
  workdir = str(tmp_path / "run")
  with MetricLogger(workdir, total_steps=2,
                    wandb=WandbSettings(project="mio-test")) as logger:
    logger.log(1, {"loss": 1.5})
    logger.log_eval(1, {"knn": {"top1": 0.25}})
  with open(os.path.join(workdir, metric_logging.WANDB_RUN_ID_FILENAME)) as f:
    run_id = f.read().strip()
  (run_file,) = glob.glob(os.path.join(
      workdir, "wandb", f"offline-run-*-{run_id}", f"run-{run_id}.wandb"))
  # The run file is wandb's binary record log; its history names the keys.
  with open(run_file, "rb") as f:
    assert b"eval/knn/top1" in f.read()


def test_a_supervised_protocol_shows_its_total_and_eta(tmp_path, capsys):
  clock = _FakeClock()
  logger = MetricLogger(str(tmp_path), total_steps=40, clock=clock)
  logger.start("linear_eval", 528)  # after pretraining's 40 steps
  logger.log(2, {"linear_eval_loss": 2.0, "linear_eval_learning_rate": 0.1,
                 "linear_eval_images_per_sec": 10.0})
  clock.now += 10.0
  logger.log(12, {"linear_eval_loss": 1.5, "linear_eval_learning_rate": 0.1,
                  "linear_eval_images_per_sec": 64.0})
  logger.close()
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines[0].startswith("step 2/528  linear_eval  loss 2.0000")
  # 10 steps in 10 s: 516 steps left.
  assert "step 12/528" in lines[1] and "64.0 img/s" in lines[1]
  assert "ETA 0:08:36" in lines[1]


def test_steps_beyond_the_pretraining_total_print_without_one(tmp_path, capsys):
  logger = metric_logging.MetricLogger(str(tmp_path), total_steps=0)
  logger.log(5, {"finetune_loss": 0.5})
  logger.close()
  assert "step 5  finetune_loss 0.5000" in capsys.readouterr().out
