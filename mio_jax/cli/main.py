r"""Pretrain MIO and evaluate the frozen encoder.

    python -m mio_jax.main --config=configs/digits.py --workdir=runs/digits \
        [--mode=all] [--config.key=value ...]

Parses flags, joins a multi-process run, checks the config and workdir and
calls `experiment.train_and_evaluate`. Without --config, the config
recorded in a trained --workdir (or finetune.init_from) is used. A bad
flag, config value, workdir, unprepared data set or missing checkpoint
stops with one line and status 2; a workdir this command created is
removed if it stops with it still empty.
"""
from absl import flags
from ml_collections import config_flags

from mio_jax.cli import common
from mio_jax.cli import distributed_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file in configs/, e.g. configs/digits.py. "
    "Default: the config recorded in --workdir (or, for --mode=finetune, in "
    "--config.finetune.init_from) by its pretraining.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory (local or gs://) for checkpoints, metrics and plots.")
_MODE = flags.DEFINE_string(
    "mode", None, "Overrides config.mode: pretrain, all (pretrain then "
    "evaluate), an evaluation of a saved step (knn_eval, fewshot_eval, "
    "feature_probe_eval, linear_eval: the augmented linear evaluation), or "
    "finetune. An unknown mode is an error listing the valid ones.")
distributed_flags.define_flags()


def main(argv) -> None:
  del argv
  config = common.config_value(_CONFIG)
  # pylint: disable=g-import-not-at-top
  from mio_jax import config_validation
  from mio_jax import distributed
  from mio_jax import errors
  from mio_jax import files
  from mio_jax import modes
  import jax
  if _MODE.value is not None:
    # Named as the user typed it (not as config.mode).
    errors.check_one_of("--mode", _MODE.value, modes.MODES)
    config.mode = _MODE.value
  distributed.initialize(distributed_flags.settings_from_flags())
  config_validation.validate_config(config, device_count=jax.device_count())
  with files.removed_if_left_empty(_WORKDIR.value or "."):
    config_validation.validate_workdir(_WORKDIR.value, config)
    # After the checks: it loads TensorFlow (seconds) for the data.
    from mio_jax import experiment
    # pylint: enable=g-import-not-at-top
    experiment.train_and_evaluate(config, _WORKDIR.value)


def run() -> None:
  """The command: main() behind the flags and one-line errors."""
  common.run_command(main, config_from=("workdir", "config.finetune.init_from"))


if __name__ == "__main__":
  run()
