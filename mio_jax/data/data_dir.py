"""Whether a remote config.dataset.data_dir (a bucket) answers in time.

`check_data_dir` turns TFDS's minute of retries on an unreachable bucket
into a one-line DataDirUnreachableError within DATA_DIR_TIMEOUT_S.
"""
import threading
from typing import Optional

from etils import epath

from mio_jax import errors


class DataDirUnreachableError(errors.UserError):
  """config.dataset.data_dir (a bucket) cannot be read."""


# An unreachable bucket makes TFDS's file system retry for about a minute
# (47 s measured here without network); the user hears within this.
DATA_DIR_TIMEOUT_S = 10.0


def check_data_dir(data_dir: Optional[str], *,
                   timeout_s: float = DATA_DIR_TIMEOUT_S) -> None:
  """Raises DataDirUnreachableError unless a remote data_dir answers in time.

  Local paths are not checked (TFDS creates them).
  """
  if not data_dir or "://" not in data_dir:
    return
  outcome = {}

  def probe():
    try:
      epath.Path(data_dir).exists()
    except Exception as e:  # pylint: disable=broad-except
      outcome["error"] = e

  # A daemon thread: a probe stuck in retries must not hold up the exit.
  thread = threading.Thread(target=probe, daemon=True)
  thread.start()
  thread.join(timeout_s)
  fix = ("check the bucket name and your credentials (gcloud auth "
         "application-default login), or use a local config.dataset.data_dir")
  if thread.is_alive():
    raise DataDirUnreachableError(
        f"config.dataset.data_dir={data_dir!r} did not answer within "
        f"{timeout_s:.0f} s; {fix}")
  if "error" in outcome:
    reason = " ".join(str(outcome["error"]).split())[:200]
    raise DataDirUnreachableError(
        f"config.dataset.data_dir={data_dir!r} cannot be read ({reason}); {fix}")
