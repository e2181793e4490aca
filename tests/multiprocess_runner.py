r"""One process of a multi-process test run, started by tests/test_distributed.py.

    JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=2 \
      python tests/multiprocess_runner.py --mode=train --out=/tmp/p0.json \
        --coordinator_address=127.0.0.1:PORT --num_processes=2 --process_id=0

Without the distributed flags it runs as a single process over its local
devices, which gives the reference to compare with. Results go to the JSON
file `--out` (stdout carries gloo's connection chatter).

Modes:
  train: resnet_tiny on synthetic batches for --steps steps over a mesh of
    every global device; writes {"losses": [...], "device_count": ...}.
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

_MODE = flags.DEFINE_enum("mode", "train",
                          ["train", "collectives", "preemptible"],
                          "What to run.")
_OUT = flags.DEFINE_string("out", None, "JSON file for the results.",
                           required=True)
_STEPS = flags.DEFINE_integer("steps", 3, "Training steps (train mode).")


def _tiny_config():
  from mio_jax import config_base  # pylint: disable=g-import-not-at-top
  config = config_base.base_config()
  config.model.name = "resnet_tiny"
  config.model.width_multiplier = 0.5
  config.model.projector_hidden_dim = 32
  config.model.projector_output_dim = 16
  config.dataset.image_size = 8
  config.optimizer.name = "sgd"
  config.optimizer.base_lr = 0.1
  config.optimizer.lr_scaling = "none"
  config.optimizer.warmup_epochs = 0.0
  config.batch_size = 16
  config.total_steps = _STEPS.value
  return config


def _train() -> dict:
  # Imported after distributed.initialize(): nothing may touch the backend
  # before it.
  import jax  # pylint: disable=g-import-not-at-top
  from mio_jax import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from mio_jax import synthetic  # pylint: disable=g-import-not-at-top
  from mio_jax import train  # pylint: disable=g-import-not-at-top

  config = _tiny_config()
  mesh = mesh_lib.make_data_mesh()
  state = train.create_train_state(config, mesh, steps_per_epoch=1)
  train_step = train.make_train_step(config, mesh, steps_per_epoch=1)
  losses = []
  batches = synthetic.synthetic_batches(config, mesh)
  for _ in range(_STEPS.value):
    state, metrics = train_step(state, next(batches))
    # Metrics are replicated: any local shard holds the global value.
    losses.append(float(metrics["loss"].addressable_shards[0].data))
  return {"losses": losses, "device_count": jax.device_count(),
          "process_count": jax.process_count()}


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
  distributed.initialize()
  if _MODE.value == "train":
    _write(_train())
  else:
    _collectives_loop(stop_on_preemption=_MODE.value == "preemptible")


if __name__ == "__main__":
  app.run(main)
