"""Small feature sets for the evaluation tests, as sharded Features."""
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
