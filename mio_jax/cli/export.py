r"""Writes a saved step's backbone to one file (and a JSON description).

    python -m mio_jax.cli.export --workdir=runs/cifar10 \
        --out=runs/cifar10/encoder.msgpack [--step=N] [--config=...]

Without --config, the config recorded in --workdir is used.

Evaluate it with `python -m mio_jax.main --mode=knn_eval
--config.eval.encoder_file=PATH ...`, or fine-tune from it with
`--config.finetune.init_from=PATH`. See `mio_jax.export`.
"""
from absl import flags
from ml_collections import config_flags

from mio_jax.cli import common

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "The config file the checkpoints were trained with "
    "(default: the one recorded in --workdir).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The run's directory.")
_OUT = flags.DEFINE_string("out", None, "The file to write (may be gs://).")
_STEP = flags.DEFINE_integer("step", None, "The saved step (default: latest).")
flags.mark_flags_as_required(["workdir", "out"])


def main(argv) -> None:
  del argv
  from mio_jax import export  # pylint: disable=g-import-not-at-top
  description = export.export_encoder(_WORKDIR.value,
                                      common.config_value(_CONFIG),
                                      _OUT.value, step=_STEP.value)
  print(f"Wrote the backbone of step {description['step']} to {_OUT.value} "
        f"(+ {_OUT.value}.json).")


if __name__ == "__main__":
  common.run_command(main, config_from=("workdir",))
