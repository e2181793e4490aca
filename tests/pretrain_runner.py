"""A tiny synthetic-data pretraining run, shared by the tests.

Run as a script by the kill/restart tests (the subprocess gets no conftest,
so callers pass XLA_FLAGS / JAX_PLATFORMS in its environment):

    python tests/pretrain_runner.py WORKDIR TOTAL_STEPS CHECKPOINT_EVERY \
        [SECONDS_PER_STEP [MODEL]]

SECONDS_PER_STEP slows the loop down (a sleep after each step) so that a
test can kill the run between two checkpoints. MODEL: resnet_tiny
(default) or vit_test (`tiny_config`).
"""
import functools
import sys
import time

import ml_collections

from mio_jax import config_base


def tiny_config(model: str = "resnet_tiny",
                **overrides) -> ml_collections.ConfigDict:
  """A tiny network on 8 px synthetic images, batch 16, the mio loss.

  model "resnet_tiny" (half width) trains with LARS; "vit_test" (patches
  of 4 px: 4 tokens and the class token) with AdamW, as ViTs do.
  """
  c = config_base.base_config()
  c.model.name = model
  c.model.width_multiplier = 0.5
  c.model.patch_size = 4
  c.model.projector_hidden_dim = 32
  c.model.projector_output_dim = 16
  c.dataset.image_size = 8
  c.batch_size = 16
  c.optimizer.name = "lars"
  c.optimizer.base_lr = 0.5
  if model.startswith("vit"):
    c.optimizer.name = "adamw"
    c.optimizer.base_lr = 0.01
    c.optimizer.weight_decay = 0.05
  c.optimizer.warmup_epochs = 1.0
  c.total_steps = 6
  c.checkpoint_every_steps = 2
  c.keep_checkpoints = 2
  c.log_every_steps = 5  # steps 1-4 take the deferred finiteness check
  for key, value in overrides.items():
    c[key] = value
  return c


STEPS_PER_EPOCH = 3


def build_tiny_run(config: ml_collections.ConfigDict, mesh=None):
  """The Run of `config` (on all devices by default), STEPS_PER_EPOCH long."""
  from mio_jax import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from mio_jax import run as run_lib  # pylint: disable=g-import-not-at-top
  mesh = mesh_lib.make_data_mesh() if mesh is None else mesh
  return run_lib.build_run(config, mesh, steps_per_epoch=STEPS_PER_EPOCH)


def tiny_run(model: str = "resnet_tiny", **overrides):
  """`build_tiny_run(tiny_config(model, **overrides))`, shared across tests.

  One Run per model and set of overrides, so tests that pretrain the same
  config several times (crash, resume) compile its step once.
  """
  return _shared_tiny_run(model, tuple(sorted(overrides.items())))


@functools.cache
def _shared_tiny_run(model: str, overrides: tuple):
  return build_tiny_run(tiny_config(model, **dict(overrides)))


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
         seconds_per_step: float = 0.0, model: str = "resnet_tiny") -> None:
  from mio_jax import synthetic  # pylint: disable=g-import-not-at-top
  from mio_jax import train  # pylint: disable=g-import-not-at-top
  run = tiny_run(model=model, total_steps=total_steps,
                 checkpoint_every_steps=checkpoint_every)
  train.pretrain(
      run, workdir,
      batches_fn=lambda start: synthetic.synthetic_batches(
          run.config, run.mesh, start_step=start),
      hooks=[lambda step, state: time.sleep(seconds_per_step)])


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]),
       *map(float, sys.argv[4:5]), *sys.argv[5:6])
