r"""The losses compared in miniature: equal budget and seeds, on digits.

    python -m mio_jax.cli.compare --out=runs/compare \
        [--losses=mio,bce,nt_xent,dcl] [--seeds=0,1,2] [--steps=30] \
        [--eval_every=10] [--temperature=0.5] [--hessian_params=projector,all] \
        [--hessian_batch_size=64] [--config=configs/digits.py] \
        [--config.key=value ...]

The sweep is `mio_jax.loss_comparison.run_comparison`; see its docstring
and docs/analysis.md for what it writes.
"""
import os
import pathlib

from absl import flags
from ml_collections import config_flags

from mio_jax.cli import common

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(pathlib.Path(__file__).resolve().parents[2] / "configs"
                  / "digits.py"),
    "The config every run starts from.")
_OUT = flags.DEFINE_string("out", "runs/compare", "Output directory.")
_LOSSES = flags.DEFINE_list("losses", ["mio", "bce", "nt_xent", "dcl"],
                            "Losses to compare.")
_SEEDS = flags.DEFINE_list(
    "seeds", ["0", "1", "2"], "Seeds (init and data order), the same for every loss.")
_STEPS = flags.DEFINE_integer("steps", 30, "Pretraining steps per run.")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 10,
                                   "Online kNN every this many steps.")
_TEMPERATURE = flags.DEFINE_float(
    "temperature", None, "Temperature of every loss (default: the config's).")
_HESSIAN_PARAMS = flags.DEFINE_list(
    "hessian_params", ["projector"],
    "Parameter subsets λ_max is taken over (all, projector, backbone), one "
    "table column each.")
_HESSIAN_BATCH_SIZE = flags.DEFINE_integer(
    "hessian_batch_size", 64,
    "Images of the final step's batch the Hessian is taken on.")


def main(argv) -> None:
  del argv
  from mio_jax import loss_comparison  # pylint: disable=g-import-not-at-top
  config, out = common.config_value(_CONFIG), _OUT.value
  if _TEMPERATURE.value is not None:
    config.temperature = _TEMPERATURE.value
  if config.dataset.data_dir is None:
    config.dataset.data_dir = os.path.join(out, "tensorflow_datasets")
  try:
    seeds = [int(s) for s in _SEEDS.value]
  except ValueError:
    common.usage_error(f"--seeds={','.join(_SEEDS.value)} must be integers")
  loss_comparison.run_comparison(
      config, out, losses=_LOSSES.value, seeds=seeds, steps=_STEPS.value,
      eval_every=_EVAL_EVERY.value,
      hessian_options={**loss_comparison.DEFAULT_HESSIAN_OPTIONS,
                       "batch_size": _HESSIAN_BATCH_SIZE.value},
      hessian_subsets=_HESSIAN_PARAMS.value)
  print((pathlib.Path(out) / loss_comparison.TABLE_NAME).read_text())


if __name__ == "__main__":
  common.run_command(main)
