"""Training and evaluation metrics to a JSON-lines file, TensorBoard and stdout.

`MetricLogger(workdir, total_steps=...)` writes, on the main
process only (WORKDIR may be local or gs://, written through etils.epath):
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

Weights & Biases is optional (`wandb=WandbSettings(...)`, built from
`config.logging` by `wandb_settings(config)`): every `log`/`log_eval` also
goes to a wandb run, with the run's config recorded and "step" as the x-axis
of every chart (so that steps logged again after a resume are kept, where
wandb's own step would drop them). "offline" mode writes the run under
WORKDIR/wandb for a later `wandb sync`, without network. The run's id is
kept in WORKDIR/wandb_run_id, so a resumed run continues the same wandb run.
`wandb` is not a requirement of mio_jax (about a dozen more packages and
2 s of import): it is imported only when enabled, and a UserError says how
to install it when it is missing.
"""
import dataclasses
import datetime
import importlib
import importlib.util
import json
import math
import secrets
import time
from typing import Any, Callable, Mapping, Optional, Protocol

import ml_collections
import numpy as np
from etils import epath

from mio_jax import errors
from mio_jax import files

METRICS_FILENAME = "metrics.jsonl"
EVAL_PREFIX = "eval/"
WANDB_MODES = ("offline", "online")
# The version the wandb logging was tested with; named in the install hint.
WANDB_VERSION = "0.31.0"
WANDB_RUN_ID_FILENAME = "wandb_run_id"
WANDB_STEP = "step"  # the x-axis of every wandb chart


class Logger(Protocol):
  """What the training loop logs to: a MetricLogger, or a stand-in."""

  def start(self, name: str, total_steps: int) -> None:
    """A training begins: "" (pretraining) or a protocol, total_steps long."""

  def log(self, step: int, metrics: Mapping[str, Any]) -> None:
    ...

  def close(self) -> None:
    ...


class PrintLogger:
  """One line per log call on stdout, main process only: for runs without a
  workdir's files (benchmarks, tests)."""

  def __init__(self, is_main_process: bool = True):
    self.is_main_process = is_main_process

  def start(self, name: str, total_steps: int) -> None:
    del name, total_steps  # each line names its step only

  def log(self, step: int, metrics: Mapping[str, Any]) -> None:
    if self.is_main_process:
      values = ", ".join(f"{k}={float(v):.5g}"
                         for k, v in sorted(metrics.items()))
      print(f"step {step}: {values}", flush=True)

  def close(self) -> None:
    pass


class WandbNotInstalledError(errors.UserError):
  """W&B logging was asked for, but the `wandb` package is missing."""

  def __init__(self):
    super().__init__(
        "config.logging.wandb_project is set but the wandb package is not "
        f"installed: pip install wandb=={WANDB_VERSION}, or leave "
        "--config.logging.wandb_project unset.")


@dataclasses.dataclass(frozen=True)
class WandbSettings:
  """Where and how MetricLogger logs to Weights & Biases.

  run_config: recorded as the wandb run's config (e.g. config.to_dict()).
  """
  project: str
  entity: Optional[str] = None  # None: the user's default entity
  mode: str = "offline"  # one of WANDB_MODES
  run_config: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def check_config(logging_config: ml_collections.ConfigDict) -> None:
  """Raises a UserError for impossible `config.logging` values.

  Keys in the messages are relative to config.logging. Also checks, without
  importing it, that wandb is installed when wandb_project is set.
  """
  errors.check_one_of("wandb_mode", logging_config.wandb_mode, WANDB_MODES)
  if (logging_config.wandb_project is not None and
      importlib.util.find_spec("wandb") is None):
    raise WandbNotInstalledError()


def wandb_settings(config: ml_collections.ConfigDict
                   ) -> Optional[WandbSettings]:
  """The W&B settings of `config.logging`; None when wandb_project is unset.

  The whole config is recorded as the run's config.

  Raises:
    InvalidValueError, WandbNotInstalledError: see `check_config`.
  """
  logging_config = config.logging
  if logging_config.wandb_project is None:
    return None
  check_config(logging_config)
  return WandbSettings(project=logging_config.wandb_project,
                       entity=logging_config.wandb_entity,
                       mode=logging_config.wandb_mode,
                       run_config=config.to_dict())


def _import_wandb():
  try:
    return importlib.import_module("wandb")
  except ImportError:
    raise WandbNotInstalledError() from None


def _wandb_run_id(workdir: str) -> str:
  """The id of this workdir's wandb run, made and saved on first use."""
  path = epath.Path(workdir) / WANDB_RUN_ID_FILENAME
  if path.exists():
    return path.read_text().strip()
  run_id = secrets.token_hex(8)  # 16 of [0-9a-f]: a valid, unique wandb id
  path.write_text(run_id + "\n")
  return run_id


def _start_wandb_run(workdir: str, settings: WandbSettings):
  """A wandb run logging against WANDB_STEP; its files in WORKDIR/wandb."""
  wandb = _import_wandb()
  # wandb writes its files locally: under a gs:// workdir, in ./wandb.
  local_dir = None if "://" in workdir else workdir
  run = wandb.init(project=settings.project, entity=settings.entity,
                   mode=settings.mode, dir=local_dir,
                   config=dict(settings.run_config),
                   id=_wandb_run_id(workdir), resume="allow")
  run.define_metric(WANDB_STEP)
  run.define_metric("*", step_metric=WANDB_STEP)
  return run


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
               wandb: Optional[WandbSettings] = None,
               clock: Callable[[], float] = time.monotonic):
    """Opens the outputs (main process only).

    Args:
      workdir: directory for metrics.jsonl and the TensorBoard events.
      total_steps: steps of the whole run, for "step N/total" and the ETA.
      is_main_process: False on other processes: every method is a no-op.
      wandb: also log to this Weights & Biases project; None: off.
      clock: seconds, monotonic; injectable for tests.

    Raises:
      WandbNotInstalledError: `wandb` given but the package is missing.
    """
    self.total_steps = total_steps
    self._prefix = ""  # the training's metric prefix ("finetune_")
    self.is_main_process = is_main_process
    self._clock = clock
    self._first = None  # (step, time) of this process's first `log`
    if not is_main_process:
      return
    # TensorFlow only writes the events; import it where it is needed.
    from mio_jax.host_tf import tf  # pylint: disable=g-import-not-at-top
    from tensorflow.core.framework import summary_pb2  # pylint: disable=g-import-not-at-top
    self._tf = tf
    # Marks the tensors as scalars for TensorBoard, as tf.summary.scalar does
    # (that needs the `tensorboard` package, which the data stack does not).
    self._scalar_metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(
            plugin_name="scalars"))
    files.ensure_dir(workdir)
    self._writer = tf.summary.create_file_writer(workdir)
    self._jsonl = (epath.Path(workdir) / METRICS_FILENAME).open("a")
    self._wandb_run = (None if wandb is None else
                       _start_wandb_run(workdir, wandb))
    self._closed = False

  def start(self, name: str, total_steps: int) -> None:
    """A training begins ("" pretraining, or a protocol): its progress lines
    show step N/total_steps and the ETA from its own speed."""
    self.total_steps = int(total_steps)
    self._prefix = f"{name}_" if name else ""
    self._first = None

  def log(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Records training metrics (scalars, jax/numpy or Python) of `step`."""
    if not self.is_main_process:
      return
    now = self._clock()
    values = _flatten(metrics)
    if self._first is None:
      self._first = (step, now)
    self._write(step, values)
    if self._prefix + "loss" in values:
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
    if self._wandb_run is not None:
      self._wandb_run.finish()
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
    if self._wandb_run is not None:
      self._wandb_run.log({WANDB_STEP: int(step), **values})

  def _print_values(self, step: int, values: dict[str, float]) -> None:
    shown = "  ".join(f"{name} {value:.4f}" for name, value in values.items())
    print(f"{self._step_label(step)}  {shown}", flush=True)

  def _step_label(self, step: int) -> str:
    if 0 < step <= self.total_steps:
      return f"step {step}/{self.total_steps}"
    return f"step {step}"

  def _progress_line(self, step: int, now: float,
                     values: dict[str, float]) -> str:
    fields = [self._step_label(step)]
    values = {name[len(self._prefix):]: value for name, value in values.items()
              if name.startswith(self._prefix)}
    if self._prefix:
      fields.append(self._prefix[:-1])
    if "loss" in values:
      fields.append(f"loss {values['loss']:.4f}")
    if "learning_rate" in values:
      fields.append(f"lr {values['learning_rate']:.3e}")
    rate = values.get("images_per_sec", math.nan)
    fields.append(f"{rate:.1f} img/s" if math.isfinite(rate) else "- img/s")
    fields.append(f"ETA {_format_duration(self._eta_seconds(step, now))}")
    return "  ".join(fields)
