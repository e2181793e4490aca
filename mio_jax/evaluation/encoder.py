"""The frozen encoder as a jitted, sharded function of images."""
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
from jax.sharding import Mesh

from mio_jax import mesh as mesh_lib

Variables = Mapping[str, Any]  # {"params": ..., "batch_stats": ...}


def make_encode_fn(model: nn.Module, mesh: Mesh
                   ) -> Callable[[Variables, jax.Array], jax.Array]:
  """Jitted (variables, images (B, H, W, 3)) -> backbone features (B, D) f32.

  `model` is an `models.Encoder` (its apply returns (features,
  projections)); BatchNorm uses its running averages, and the projector's
  output is unused, so XLA drops it. Variables are replicated; images and
  features are sharded over `data` (B a multiple of the device count).
  """

  def encode(variables: Variables, images: jax.Array) -> jax.Array:
    features, _ = model.apply(
        {"params": variables["params"],
         "batch_stats": variables["batch_stats"]}, images, train=False)
    return features.astype(jax.numpy.float32)

  batch = mesh_lib.batch_sharding(mesh)
  return jax.jit(encode,
                 in_shardings=(mesh_lib.replicated_sharding(mesh), batch),
                 out_shardings=batch)
