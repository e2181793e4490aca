r"""Command line: pretrain MIO and evaluate the frozen encoder.

    python -m mio_jax.main --config=configs/digits.py --workdir=runs/digits \
        [--mode=all] [--config.key=value ...]

Only parses flags; the work is `experiment.train_and_evaluate`. A bad flag,
config value or workdir stops before any work with one line and status 2.
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from ml_collections import config_flags

from mio_jax import config_validation
from mio_jax import console
from mio_jax import distributed
from mio_jax import experiment

USAGE_EXIT_CODE = 2

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file in configs/, e.g. configs/digits.py.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory (local or gs://) for checkpoints, metrics and plots.")
_MODE = flags.DEFINE_enum(
    "mode", None, config_validation.MODES, "Overrides config.mode.")


def _usage_error(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(USAGE_EXIT_CODE)


def parse_flags(argv):
  """absl's parser, with one-line errors instead of tracebacks."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _usage_error(f"{e}. See --helpfull for the flags.")
  except (KeyError, AttributeError) as e:
    # ml_collections raises these for an override of a key that does not exist;
    # its message carries a did-you-mean suggestion.
    message = str(e.args[0] if e.args else e).strip("'\"").replace("\\n", " ")
    _usage_error(f"unknown config key in a --config.* override: {message}. "
                 "All keys and defaults are in mio_jax/config_base.py.")
  except Exception as e:  # pylint: disable=broad-except
    # Loading the config file runs user code: whatever it raises is a usage error.
    _usage_error(f"could not load --config: {type(e).__name__}: {e}")


def main(argv):
  if len(argv) > 1:
    _usage_error(f"unexpected arguments {argv[1:]}; flags look like --key=value")
  console.quiet_library_logs()
  config = _CONFIG.value
  if config is None:
    _usage_error("--config is required, e.g. --config=configs/digits.py")
  if _MODE.value is not None:
    config.mode = _MODE.value
  distributed.initialize()
  import jax  # pylint: disable=g-import-not-at-top
  try:
    config_validation.validate_config(config, device_count=jax.device_count())
    config_validation.validate_workdir(_WORKDIR.value, config)
  except config_validation.ConfigError as e:
    _usage_error(str(e))
  experiment.train_and_evaluate(config, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
