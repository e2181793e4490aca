"""Deterministic random two-view batches, shaped and sharded like real data.

For tests and benchmarks: the batch of step i depends only on
(config.seed, i), so a restarted run sees the same data from its resume step.
"""
from typing import Iterator

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from mio_jax import mesh as mesh_lib

NUM_CLASSES = 10


def synthetic_batch(config: ml_collections.ConfigDict, mesh: Mesh,
                    step: int) -> dict[str, jax.Array]:
  """The global batch of `step`, shaped as the pipeline's
  (`pretraining.batch_spec`): {"view1","view2": f32 (B,S,S,3), "label",
  "index": int32 (B,)}."""
  size, batch_size = config.dataset.image_size, config.batch_size
  rng = np.random.default_rng([config.seed, step])
  host_batch = {
      "view1": rng.standard_normal((batch_size, size, size, 3), np.float32),
      "view2": rng.standard_normal((batch_size, size, size, 3), np.float32),
      "label": rng.integers(0, NUM_CLASSES, (batch_size,), dtype=np.int32),
      "index": np.arange(step * batch_size, (step + 1) * batch_size,
                         dtype=np.int32),
  }
  sharding = mesh_lib.batch_sharding(mesh)
  # Every process builds the same global batch and fills only the shards of
  # its own devices, so this also works with several processes.
  return {
      key: jax.make_array_from_callback(value.shape, sharding,
                                        lambda index, v=value: v[index])
      for key, value in host_batch.items()
  }


def synthetic_batches(config: ml_collections.ConfigDict, mesh: Mesh, *,
                      start_step: int = 0) -> Iterator[dict[str, jax.Array]]:
  """Batches of steps start_step, start_step + 1, ... (endless)."""
  step = start_step
  while True:
    yield synthetic_batch(config, mesh, step)
    step += 1
