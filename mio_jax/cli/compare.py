r"""The losses compared: each one's setting chosen on a validation split,
then paired over seeds on the test split, at an equal budget.

    python -m mio_jax.cli.compare --out=runs/compare \
        [--losses=mio,bce,nt_xent,dcl] [--grid=temperature:0.1,0.2,0.5] \
        [--grid=mio:negative_temperature:0.5,1.0 ...] [--select_by=knn_top1] \
        [--validation_fraction=0.1] [--selection_seeds=0] [--seeds=0,1,2] \
        [--reference=nt_xent] [--steps=30] [--eval_every=10] \
        [--hessian_params=projector,all] [--allow_changes] \
        [--config=configs/digits.py] [--config.key=value ...]

The sweep is `mio_jax.loss_comparison.run_comparison`; see its docstring
and docs/analysis.md for what it runs and writes. Rerun the same command to
continue an interrupted sweep: finished runs are skipped.
"""
import pathlib

from absl import flags
from ml_collections import config_flags

from mio_jax.cli import common

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(pathlib.Path(__file__).resolve().parents[2] / "configs"
                  / "digits.py"),
    "The config every run starts from (any data set and model).")
_OUT = flags.DEFINE_string("out", "runs/compare", "Output directory.")
_LOSSES = flags.DEFINE_list("losses", ["mio", "bce", "nt_xent", "dcl"],
                            "Losses to compare.")
_GRID = flags.DEFINE_multi_string(
    "grid", ["temperature:0.1,0.2,0.5"],
    "KEY:V1,V2,... (every loss that takes KEY) or LOSS:KEY:V1,V2,... (one "
    "loss); repeat for more keys: each loss's grid is the product of its "
    "keys' values. Keys are config keys: temperature, negative_temperature "
    "(mio, bce), optimizer.base_lr, ...")
_SELECT_BY = flags.DEFINE_enum(
    "select_by", "knn_top1", ["knn_top1", "fewshot_top1", "feature_probe_top1"],
    "Validation metric that chooses each loss's grid point.")
_VALIDATION_FRACTION = flags.DEFINE_float(
    "validation_fraction", 0.1,
    "Share of the labelled training split held out to select on.")
_SELECTION_SEEDS = flags.DEFINE_list(
    "selection_seeds", ["0"], "Seeds each grid point is trained with.")
_SEEDS = flags.DEFINE_list(
    "seeds", ["0", "1", "2"],
    "Seeds (init and data order) of the test runs, the same for every loss.")
_REFERENCE = flags.DEFINE_string(
    "reference", "nt_xent", "The loss every other one is paired with.")
_STEPS = flags.DEFINE_integer("steps", 30, "Pretraining steps per run.")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 10,
                                   "Online kNN every this many steps.")
_HESSIAN_PARAMS = flags.DEFINE_list(
    "hessian_params", [],
    "Parameter subsets λ_max of the test runs is taken over (all, "
    "projector, backbone), one table column each; none by default.")
_HESSIAN_BATCH_SIZE = flags.DEFINE_integer(
    "hessian_batch_size", 64,
    "Images of the final step's batch the Hessian is taken on.")
_ALLOW_CHANGES = flags.DEFINE_boolean(
    "allow_changes", False,
    "Reuse an --out made with another grid, selection seeds or select_by, "
    "keeping its finished runs.")


def _seeds(holder: flags.FlagHolder) -> list[int]:
  try:
    return [int(s) for s in holder.value]
  except ValueError:
    common.usage_error(f"--{holder.name}={','.join(holder.value)} must be "
                       "integers")


def main(argv) -> None:
  del argv
  from mio_jax import loss_comparison  # pylint: disable=g-import-not-at-top
  config, out = common.config_value(_CONFIG), _OUT.value
  loss_comparison.run_comparison(
      config, out, losses=_LOSSES.value, grid=_GRID.value,
      select_by=_SELECT_BY.value,
      validation_fraction=_VALIDATION_FRACTION.value,
      selection_seeds=_seeds(_SELECTION_SEEDS), seeds=_seeds(_SEEDS),
      reference=_REFERENCE.value, steps=_STEPS.value,
      eval_every=_EVAL_EVERY.value,
      hessian_options={**loss_comparison.DEFAULT_HESSIAN_OPTIONS,
                       "batch_size": _HESSIAN_BATCH_SIZE.value},
      hessian_subsets=_HESSIAN_PARAMS.value,
      allow_changes=_ALLOW_CHANGES.value)
  print((pathlib.Path(out) / loss_comparison.TABLE_NAME).read_text())


if __name__ == "__main__":
  common.run_command(main)
