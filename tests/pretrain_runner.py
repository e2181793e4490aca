"""A tiny synthetic-data pretraining run, shared by the tests.

Run as a script by the kill/restart tests (the subprocess gets no conftest,
so callers pass XLA_FLAGS / JAX_PLATFORMS in its environment):

    python tests/pretrain_runner.py WORKDIR TOTAL_STEPS CHECKPOINT_EVERY \
        [SECONDS_PER_STEP]

SECONDS_PER_STEP slows the loop down (a sleep after each step) so that a
test can kill the run between two checkpoints.
"""
import functools
import sys
import time

import ml_collections

import tiny


def tiny_config(**overrides) -> ml_collections.ConfigDict:
  """resnet_tiny at half width on 8 px synthetic images, batch 16, LARS,
  the mio loss; `overrides` are flat config keys."""
  return tiny.tiny_config(**{
      "model.width_multiplier": 0.5, "batch_size": 16,
      "optimizer.name": "lars", "optimizer.base_lr": 0.5,
      "optimizer.warmup_epochs": 1.0, "total_steps": 6,
      "checkpoint_every_steps": 2, "keep_checkpoints": 2,
      # Steps 1-4 take the deferred finiteness check.
      "log_every_steps": 5, **overrides})


STEPS_PER_EPOCH = 3


def build_tiny_run(config: ml_collections.ConfigDict, mesh=None):
  """The Run of `config` (on all devices by default), STEPS_PER_EPOCH long."""
  from mio_jax import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from mio_jax import run as run_lib  # pylint: disable=g-import-not-at-top
  mesh = mesh_lib.make_data_mesh() if mesh is None else mesh
  return run_lib.build_run(config, mesh, steps_per_epoch=STEPS_PER_EPOCH)


@functools.cache
def tiny_run(**overrides):
  """`build_tiny_run(tiny_config(**overrides))`, shared across tests.

  One Run per set of overrides, so tests that pretrain the same config
  several times (crash, resume) compile its step once.
  """
  return build_tiny_run(tiny_config(**overrides))


def assert_trees_equal(a, b) -> None:
  """Same structure and bit-identical leaves."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def open_checkpointer(workdir, config: ml_collections.ConfigDict):
  """A Checkpointer of `workdir` as pretraining `config` would open it."""
  from mio_jax import checkpointing  # pylint: disable=g-import-not-at-top
  return checkpointing.Checkpointer(
      str(workdir), keep=config.keep_checkpoints,
      settings=checkpointing.run_settings(config))


def main(workdir: str, total_steps: int, checkpoint_every: int,
         seconds_per_step: float = 0.0) -> None:
  from mio_jax import synthetic  # pylint: disable=g-import-not-at-top
  from mio_jax import train  # pylint: disable=g-import-not-at-top
  run = tiny_run(total_steps=total_steps,
                 checkpoint_every_steps=checkpoint_every)
  train.pretrain(
      run, workdir,
      batches_fn=lambda start: synthetic.synthetic_batches(
          run.config, run.mesh, start_step=start),
      hooks=[lambda step, state: time.sleep(seconds_per_step)])


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]),
       *map(float, sys.argv[4:5]))
