"""Checks the losses on this machine's devices in a few seconds.

    python -m mio_jax.cli.selfcheck [--images_per_device=16] [--dim=128]

Prints one line per check of `mio_jax.selfcheck.run_checks`; exits 1 if any
fails.
"""
import sys

from absl import flags

from mio_jax.cli import common

_IMAGES_PER_DEVICE = flags.DEFINE_integer(
    "images_per_device", 16, "Images (both views) per device in the batch.")
_DIM = flags.DEFINE_integer("dim", 128, "Projector output dimension.")


def main(argv) -> None:
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  from mio_jax import selfcheck  # pylint: disable=g-import-not-at-top
  results = selfcheck.run_checks(_IMAGES_PER_DEVICE.value, _DIM.value)
  print(f"devices: {jax.local_device_count()} x {jax.devices()[0].platform}")
  for name, error, passed in results:
    detail = "" if error is None else f"rel. error {error:.2e}"
    print(f"{'ok  ' if passed else 'FAIL'} {name:50s} {detail}")
  if not all(passed for _, _, passed in results):
    sys.exit(1)


if __name__ == "__main__":
  common.run_command(main)
