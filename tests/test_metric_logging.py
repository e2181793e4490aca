"""Tests of MetricLogger: jsonl, TensorBoard events, terminal line, processes."""
import json
import math
import os

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from mio_jax.metric_logging import MetricLogger


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
