"""Training and evaluation metrics to a JSON-lines file, TensorBoard and stdout.

`MetricLogger(workdir, total_steps=...)` writes, on the main
process only (WORKDIR may be local or gs://, written through tf.io.gfile):
  * WORKDIR/metrics.jsonl: one JSON object per `log`/`log_eval` call, with
    "step" and the metrics as Python floats (non-finite values are written
    as NaN/Infinity, which Python's json and pandas read back).
  * TensorBoard scalar events in WORKDIR, under the same names as the jsonl
    keys (`tensorboard --logdir WORKDIR`).
  * one terminal line per call: step/total, loss, lr, images/s and ETA.

The ETA is measured by the logger from the average rate since the first
`log` of this process (never since step 0, so it stays right after a
resume; it includes the time of periodic evaluations, which recur).
"images_per_sec" is the caller's: the training loop knows where the run
started and when it paused for evaluations.

A `log` with a "loss" prints the progress line (step/total, loss, lr,
images/s, ETA); any other `log` or `log_eval` prints its values. Other
processes (is_main_process=False) do nothing at all.
"""
import datetime
import json
import math
import os
import time
from typing import Any, Callable, Mapping, Optional

import numpy as np

METRICS_FILENAME = "metrics.jsonl"
EVAL_PREFIX = "eval/"


def _flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
  """{"a": {"b": x}} -> {"a/b": float(x)}; values must be scalars."""
  flat = {}
  for name, value in metrics.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, f"{prefix}{name}/"))
      continue
    array = np.asarray(value)
    if array.size != 1:
      raise ValueError(f"metric {prefix}{name!r} must be a scalar; got shape "
                       f"{array.shape}.")
    flat[f"{prefix}{name}"] = float(array.reshape(()))
  return flat


def _format_duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "-"
  return str(datetime.timedelta(seconds=round(seconds)))


class MetricLogger:
  """Writes metrics to WORKDIR/metrics.jsonl, TensorBoard and the terminal."""

  def __init__(self, workdir: str, *, total_steps: int,
               is_main_process: bool = True,
               clock: Callable[[], float] = time.monotonic):
    """Opens the outputs (main process only).

    Args:
      workdir: directory for metrics.jsonl and the TensorBoard events.
      total_steps: steps of the whole run, for "step N/total" and the ETA.
      is_main_process: False on other processes: every method is a no-op.
      clock: seconds, monotonic; injectable for tests.
    """
    self.total_steps = total_steps
    self.is_main_process = is_main_process
    self._clock = clock
    self._first = None  # (step, time) of this process's first `log`
    if not is_main_process:
      return
    # TensorFlow only writes the events; import it where it is needed.
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from tensorflow.core.framework import summary_pb2  # pylint: disable=g-import-not-at-top
    self._tf = tf
    # Marks the tensors as scalars for TensorBoard, as tf.summary.scalar does
    # (that needs the `tensorboard` package, which the data stack does not).
    self._scalar_metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(
            plugin_name="scalars"))
    tf.io.gfile.makedirs(workdir)
    self._writer = tf.summary.create_file_writer(workdir)
    self._jsonl = tf.io.gfile.GFile(os.path.join(workdir, METRICS_FILENAME),
                                    "a")
    self._closed = False

  def log(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Records training metrics (scalars, jax/numpy or Python) of `step`."""
    if not self.is_main_process:
      return
    now = self._clock()
    values = _flatten(metrics)
    if self._first is None:
      self._first = (step, now)
    self._write(step, values)
    if "loss" in values:
      print(self._progress_line(step, now, values), flush=True)
    else:
      self._print_values(step, values)

  def log_eval(self, step: int, results: Mapping[str, Any],
               prefix: str = EVAL_PREFIX) -> None:
    """Records evaluation results (nested dicts allowed) as prefix + name."""
    if not self.is_main_process:
      return
    values = _flatten(results, prefix)
    self._write(step, values)
    self._print_values(step, values)

  def close(self) -> None:
    """Flushes and closes the outputs."""
    if not self.is_main_process or self._closed:
      return
    self._writer.close()
    self._jsonl.close()
    self._closed = True

  def __enter__(self) -> "MetricLogger":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def _eta_seconds(self, step: int, now: float) -> float:
    first_step, first_time = self._first
    if step <= first_step or now <= first_time:
      return math.nan
    steps_per_sec = (step - first_step) / (now - first_time)
    return max(self.total_steps - step, 0) / steps_per_sec

  def _write(self, step: int, values: dict[str, float]) -> None:
    self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
    self._jsonl.flush()
    with self._writer.as_default():
      for name, value in values.items():
        self._tf.summary.write(name, self._tf.constant(value, self._tf.float32),
                               step=int(step), metadata=self._scalar_metadata)
    self._writer.flush()

  def _print_values(self, step: int, values: dict[str, float]) -> None:
    shown = "  ".join(f"{name} {value:.4f}" for name, value in values.items())
    print(f"step {step}/{self.total_steps}  {shown}", flush=True)

  def _progress_line(self, step: int, now: float,
                     values: dict[str, float]) -> str:
    fields = [f"step {step}/{self.total_steps}"]
    if "loss" in values:
      fields.append(f"loss {values['loss']:.4f}")
    if "learning_rate" in values:
      fields.append(f"lr {values['learning_rate']:.3e}")
    rate = values.get("images_per_sec", math.nan)
    fields.append(f"{rate:.1f} img/s" if math.isfinite(rate) else "- img/s")
    fields.append(f"ETA {_format_duration(self._eta_seconds(step, now))}")
    return "  ".join(fields)
