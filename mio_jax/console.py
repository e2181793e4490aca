"""Keeps the terminal readable: library INFO chatter is dropped, ours kept.

Under `absl.app.run` every absl log line at INFO reaches stderr, and Orbax
and TFDS write dozens per checkpoint or dataset load. They all go through the
one absl logger, so they are told apart by the file that logged them.
"""
import logging as py_logging

from absl import logging

_NOISY_PACKAGES = ("/orbax/", "/tensorflow_datasets/", "/jax/_src/", "/etils/")


class _DropLibraryInfo(py_logging.Filter):

  def filter(self, record: py_logging.LogRecord) -> bool:
    if record.levelno >= py_logging.WARNING:
      return True
    return not any(p in record.pathname for p in _NOISY_PACKAGES)


def quiet_library_logs() -> None:
  """Drops INFO lines of Orbax, TFDS and JAX internals; warnings still show."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _DropLibraryInfo) for f in handler.filters):
    handler.addFilter(_DropLibraryInfo())
