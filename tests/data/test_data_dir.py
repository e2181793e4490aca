"""An unreachable bucket as data_dir is a one-line error within seconds."""
import time

import pytest
from etils import epath

from mio_jax import errors
from mio_jax.data import data_dir


def test_unreachable_bucket_is_reported_within_the_timeout():
  start = time.monotonic()
  # No network here: the file system would retry for about a minute.
  with pytest.raises(data_dir.DataDirUnreachableError,
                     match="data_dir='gs://mio-jax-no-such-bucket/tfds'"
                           ".*credentials") as error:
    data_dir.check_data_dir("gs://mio-jax-no-such-bucket/tfds", timeout_s=2)
  assert time.monotonic() - start < 8
  assert isinstance(error.value, errors.UserError)
  assert "\n" not in str(error.value)


def test_local_and_unset_data_dirs_are_not_probed(tmp_path, monkeypatch):
  probed = []

  def probe(self):
    probed.append(str(self))
    return False

  # The probe asks epath whether the data_dir exists (in a thread).
  monkeypatch.setattr(type(epath.Path(tmp_path)), "exists", probe)
  monkeypatch.setattr(type(epath.Path("gs://bucket/tfds")), "exists", probe)
  data_dir.check_data_dir(None)
  data_dir.check_data_dir(str(tmp_path / "not_yet_created"))
  data_dir.check_data_dir(str(tmp_path / "a" / ".." / "b"))
  assert not probed
  # The same stand-in sees a bucket probed: the test can tell.
  data_dir.check_data_dir("gs://bucket/tfds", timeout_s=2)
  assert probed == ["gs://bucket/tfds"]
