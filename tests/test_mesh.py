import jax
import numpy as np

from mio_jax import mesh as mesh_lib


def test_data_mesh_spans_all_devices_and_splits_batches():
  mesh = mesh_lib.make_data_mesh()
  assert mesh.shape == {mesh_lib.DATA_AXIS: jax.device_count()} == {"data": 8}
  x = jax.device_put(np.arange(16.0).reshape(16, 1),
                     mesh_lib.batch_sharding(mesh))
  assert {s.data.shape for s in x.addressable_shards} == {(2, 1)}
  y = jax.device_put(np.ones(3), mesh_lib.replicated_sharding(mesh))
  assert all(s.data.shape == (3,) for s in y.addressable_shards)
