r"""One process of a multi-process test run (tests/distributed/test_distributed.py).

    JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=2 \
      python tests/multiprocess_runner.py --mode=train --out=/tmp/p0.json \
        --coordinator_address=127.0.0.1:PORT --num_processes=2 --process_id=0

Without the distributed flags it runs as a single process over its local
devices, which gives the reference to compare with. Results go to the JSON
file `--out` (stdout carries gloo's connection chatter).

Modes (the model and data are pretrain_runner.tiny_config's: resnet_tiny on
synthetic batches, over a mesh of every global device):
  train: --steps calls of the train step; writes {"losses": [...],
    "device_count": ..., "process_count": ...}.
  pretrain: `pretrain_runner.pretrain` into --workdir (checkpoints, resume, SIGTERM
    save), sleeping --seconds_per_step after each step; appends one JSON
    line {"step", "loss"} per step to --out.
  collectives: an all-gather across processes every 0.1 s, forever; writes
    {"ready": true} after the first one (for the process-death test).
  preemptible: the same loop, stopping when JAX's preemption sync point says
    a process got SIGTERM; rewrites {"stopped_at": step} then exits 0.
"""
import json
import time

from absl import app
from absl import flags

from mio_jax import distributed
from mio_jax.cli import distributed_flags

distributed_flags.define_flags()
_MODE = flags.DEFINE_enum("mode", "train",
                          ["train", "pretrain", "collectives", "preemptible"],
                          "What to run.")
_OUT = flags.DEFINE_string("out", None, "JSON file for the results.",
                           required=True)
_STEPS = flags.DEFINE_integer("steps", 4, "Training steps (train, pretrain).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir (pretrain mode).")
_SECONDS_PER_STEP = flags.DEFINE_float(
    "seconds_per_step", 0.0, "Sleep after each step (pretrain mode), so a "
    "test can signal the run between two steps.")


def _config():
  """The tiny config, logging every step."""
  # Imported after distributed.initialize(): nothing may touch the backend
  # before it.
  import pretrain_runner  # pylint: disable=g-import-not-at-top
  return pretrain_runner.tiny_config(total_steps=_STEPS.value,
                                     log_every_steps=1)


def _train() -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import pretrain_runner  # pylint: disable=g-import-not-at-top
  from mio_jax import pretraining  # pylint: disable=g-import-not-at-top
  from mio_jax import synthetic  # pylint: disable=g-import-not-at-top
  config = _config()
  recipe = pretrain_runner.build_tiny_recipe(config)
  state = pretraining.init_state(recipe)
  train_step = pretraining.make_train_step(recipe)
  losses = []
  batches = synthetic.synthetic_batches(config, recipe.mesh)
  for _ in range(_STEPS.value):
    state, metrics = train_step(state, next(batches))
    # Metrics are replicated: any local shard holds the global value.
    losses.append(float(metrics["loss"].addressable_shards[0].data))
  return {"losses": losses, "device_count": jax.device_count(),
          "process_count": jax.process_count()}


class _JsonLinesLogger:
  """pretrain's logger: one {"step", "loss"} line per log call, flushed."""

  def __init__(self, path: str):
    self._file = open(path, "a")

  def start(self, name: str, total_steps: int) -> None:
    del name, total_steps

  def log(self, step: int, metrics: dict) -> None:
    self._file.write(json.dumps({"step": step, "loss": metrics["loss"]}) + "\n")
    self._file.flush()

  def close(self) -> None:
    self._file.close()


def _pretrain() -> None:
  import pretrain_runner  # pylint: disable=g-import-not-at-top
  logger = _JsonLinesLogger(_OUT.value)
  try:
    pretrain_runner.pretrain(
        _config(), _WORKDIR.value, logger=logger,
        hooks=[lambda step, state: time.sleep(_SECONDS_PER_STEP.value)])
  finally:
    logger.close()


def _collectives_loop(stop_on_preemption: bool) -> None:
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  step = 0
  while True:
    multihost_utils.process_allgather(jnp.ones(()))
    if step == 0:
      _write({"ready": True})
    if (stop_on_preemption
        and multihost_utils.reached_preemption_sync_point(step)):
      _write({"stopped_at": step})
      return
    step += 1
    time.sleep(0.1)


def _write(result: dict) -> None:
  with open(_OUT.value, "w") as f:
    json.dump(result, f)


def main(argv):
  del argv
  distributed.initialize(distributed_flags.settings_from_flags())
  if _MODE.value == "train":
    _write(_train())
  elif _MODE.value == "pretrain":
    _pretrain()
  else:
    _collectives_loop(stop_on_preemption=_MODE.value == "preemptible")


if __name__ == "__main__":
  app.run(main)
