"""Small feature sets and encoder variables for the evaluation tests."""
import jax
import jax.numpy as jnp
import numpy as np

from mio_jax import mesh as mesh_lib
from mio_jax.evaluation import features_from_arrays


def clusters(num_classes, per_class, dim, *, spread, seed):
  """Gaussian blobs around random unit centres; returns (x, y) shuffled."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(num_classes, dim))
  centres /= np.linalg.norm(centres, axis=1, keepdims=True)
  y = np.repeat(np.arange(num_classes), per_class)
  x = centres[y] + spread * rng.normal(size=(len(y), dim))
  order = rng.permutation(len(y))
  return x[order].astype(np.float32), y[order]


def sharded(*arrays, mesh=None):
  """(x, y, x, y, ...) -> Features per pair, over all 8 devices by default."""
  mesh = mesh_lib.make_data_mesh() if mesh is None else mesh
  pairs = [features_from_arrays(arrays[i], arrays[i + 1], mesh)
           for i in range(0, len(arrays), 2)]
  return pairs[0] if len(pairs) == 1 else tuple(pairs)


def random_variables(model, *, image_size, seed):
  """{"params", "batch_stats"} of `model`, He-normal kernels, from numpy.

  `model.init` takes ~20 s to compile for resnet_tiny on these 2 cores;
  `jax.eval_shape` gives the structure for free.
  """
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((2, image_size, image_size, 3)),
      train=False))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      return rng.normal(size=leaf.shape).astype(np.float32) * np.sqrt(
          2.0 / fan_in)
    fill = 1.0 if name in ("scale", "var") else 0.0
    return np.full(leaf.shape, fill, np.float32)

  variables = jax.tree_util.tree_map_with_path(draw, shapes)
  return {"params": variables["params"],
          "batch_stats": variables["batch_stats"]}
