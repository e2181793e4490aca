"""An unreachable bucket as data_dir is a one-line error within seconds."""
import time

import pytest

from mio_jax import errors
from mio_jax.data import registry


def test_unreachable_bucket_is_reported_within_the_timeout():
  start = time.monotonic()
  # No network here: the file system would retry for about a minute.
  with pytest.raises(registry.DataDirUnreachableError,
                     match="data_dir='gs://mio-jax-no-such-bucket/tfds'"
                           ".*credentials") as error:
    registry.check_data_dir("gs://mio-jax-no-such-bucket/tfds", timeout_s=2)
  assert time.monotonic() - start < 8
  assert isinstance(error.value, errors.UserError)
  assert "\n" not in str(error.value)


def test_local_and_unset_data_dirs_are_not_probed(tmp_path):
  registry.check_data_dir(None)
  registry.check_data_dir(str(tmp_path / "not_yet_created"))
