"""A tiny synthetic-data pretraining run, shared by the tests.

Run as a script by the kill/restart tests (the subprocess gets no conftest,
so callers pass XLA_FLAGS / JAX_PLATFORMS in its environment):

    python tests/pretrain_runner.py WORKDIR TOTAL_STEPS CHECKPOINT_EVERY \
        [SECONDS_PER_STEP [MODEL]]

SECONDS_PER_STEP slows the loop down (a sleep after each step) so that a
test can kill the run between two checkpoints. MODEL: resnet_tiny
(default) or vit_test (`tiny_config`).
"""
import sys
import time

import ml_collections

import tiny


def tiny_config(model: str = "resnet_tiny",
                **overrides) -> ml_collections.ConfigDict:
  """A tiny network on 8 px synthetic images, batch 16, the mio loss;
  `overrides` are flat config keys.

  model "resnet_tiny" (half width) trains with LARS; "vit_test" (patches
  of 4 px: 4 tokens and the class token) with AdamW, as ViTs do.
  """
  optimizer = ({"optimizer.name": "adamw", "optimizer.base_lr": 0.01,
                "optimizer.weight_decay": 0.05} if model.startswith("vit")
               else {"optimizer.name": "lars", "optimizer.base_lr": 0.5})
  return tiny.tiny_config(**{
      "model.name": model, "model.width_multiplier": 0.5,
      "model.patch_size": 4, "batch_size": 16, **optimizer,
      "optimizer.warmup_epochs": 1.0, "total_steps": 6,
      "checkpoint_every_steps": 2, "keep_checkpoints": 2,
      # Steps 1-4 take the deferred finiteness check.
      "log_every_steps": 5, **overrides})


STEPS_PER_EPOCH = 3


def tiny_facts(config: ml_collections.ConfigDict):
  """Synthetic data of STEPS_PER_EPOCH batches an epoch, without labels."""
  from mio_jax import recipe  # pylint: disable=g-import-not-at-top
  return recipe.DataFacts(num_examples=STEPS_PER_EPOCH * config.batch_size)


def build_tiny_recipe(config: ml_collections.ConfigDict, mesh=None):
  """The Recipe of `config` (on all devices by default) on `tiny_facts`,
  as `pretraining.setup` builds it (so both share the compiled step)."""
  from mio_jax import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from mio_jax import pretraining  # pylint: disable=g-import-not-at-top
  mesh = mesh_lib.make_data_mesh() if mesh is None else mesh
  return pretraining.recipe_of(config, mesh, tiny_facts(config))


def tiny_recipe(model: str = "resnet_tiny", **overrides):
  """`build_tiny_recipe(tiny_config(model, **overrides))`."""
  return build_tiny_recipe(tiny_config(model, **overrides))


def pretrain(config: ml_collections.ConfigDict, workdir, *, batches=None,
             logger=None, hooks=(), preemption=None, mesh=None):
  """Pretrains `config` on synthetic batches (default) in workdir, as
  `main` does (`pretraining.setup`, `loop.train`); returns the state."""
  # pylint: disable=g-import-not-at-top
  from mio_jax import loop
  from mio_jax import mesh as mesh_lib
  from mio_jax import metric_logging
  from mio_jax import pretraining
  from mio_jax import synthetic
  mesh = mesh_lib.make_data_mesh() if mesh is None else mesh
  if batches is None:
    batches = lambda start: synthetic.synthetic_batches(config, mesh,
                                                        start_step=start)
  training = pretraining.setup(config, mesh, tiny_facts(config),
                               workdir=str(workdir), batches=batches)
  return loop.train(training, logger=logger or metric_logging.PrintLogger(),
                    hooks=hooks, preemption=preemption)


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
  from mio_jax import resume_guard  # pylint: disable=g-import-not-at-top
  return checkpointing.Checkpointer(
      str(workdir), keep=config.keep_checkpoints,
      record=resume_guard.pretraining_record(config))


def main(workdir: str, total_steps: int, checkpoint_every: int,
         seconds_per_step: float = 0.0, model: str = "resnet_tiny") -> None:
  pretrain(tiny_config(model, total_steps=total_steps,
                       checkpoint_every_steps=checkpoint_every), workdir,
           hooks=[lambda step, state: time.sleep(seconds_per_step)])


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]),
       *map(float, sys.argv[4:5]), *sys.argv[5:6])
