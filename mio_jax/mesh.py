"""The device mesh shared by the trainer, the input pipeline and the losses.

Data parallelism only: one mesh axis, `data`, spanning every device of every
process. Batches are split along it; parameters are replicated.
"""
from typing import Optional, Sequence

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_data_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A 1-D mesh named `data` over `devices` (default: all global devices).

  Auto axis types keep the classic jit-with-shardings behaviour (JAX 0.10
  builds Explicit meshes by default, where indexing a sharded array raises).
  """
  devices = list(jax.devices() if devices is None else devices)
  return jax.make_mesh((len(devices),), (DATA_AXIS,),
                       axis_types=(AxisType.Auto,), devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data axis."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  """A full copy on every device."""
  return NamedSharding(mesh, PartitionSpec())
