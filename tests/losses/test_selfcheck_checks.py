"""mio_jax.selfcheck's loss checks pass on the 8 CPU devices."""
from loss_testing import data_mesh  # pylint: disable=unused-import
from mio_jax import selfcheck


def test_selfcheck_passes_on_cpu_devices(data_mesh):  # pylint: disable=redefined-outer-name
  del data_mesh  # only skips without 8 devices
  results = selfcheck.run_checks(images_per_device=2, dim=8)
  assert len(results) == 10
  failed = [name for name, _, passed in results if not passed]
  assert not failed, failed
