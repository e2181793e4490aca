r"""Hessian eigenspectrum of the pretraining loss at a checkpoint, per loss.

    python -m mio_jax.cli.hessian --workdir=runs/digits \
        [--losses=mio,bce,nt_xent,dcl] [--top_k=5] \
        [--params=all|projector|backbone] [--batch_size=64] [--data=pipeline]

Without --config, the config recorded in --workdir is used.

The analysis is `mio_jax.analysis.hessian.analyze_checkpoint`; writes
`<workdir>/hessian/hessian.json` and `hessian_spectrum.png`. See
docs/analysis.md.
"""
import os

from absl import flags
from ml_collections import config_flags

from mio_jax.cli import common

# The vocabularies (loss names, parameter subsets, eigsh ends) are checked by
# the analysis, which lists the valid ones; flags stay light for --help.
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "The config file the checkpoints were trained with "
    "(default: the one recorded in --workdir).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The run's directory.")
_LOSSES = flags.DEFINE_list("losses", ["mio", "bce", "nt_xent", "dcl"],
                            "Losses to analyse at the same point.")
_TOP_K = flags.DEFINE_integer("top_k", 5, "Number of top eigenvalues.")
_PARAMS = flags.DEFINE_string(
    "params", "all", "Parameters the Hessian is taken with respect to "
    "(all, projector, backbone).")
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", None, "Images of the fixed batch (default: config.batch_size).")
_DATA = flags.DEFINE_string("data", "pipeline",
                            "Where the fixed batch comes from (pipeline, synthetic).")
_WHICH = flags.DEFINE_string("which", "LA",
                             "Which end of the spectrum --top_k takes (LA, SA, LM).")
_LANCZOS_STEPS = flags.DEFINE_integer("lanczos_steps", 64,
                                      "Lanczos steps per SLQ probe.")
_NUM_PROBES = flags.DEFINE_integer("num_probes", 2, "SLQ probe vectors.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None,
                                  "Default: <workdir>/hessian.")
flags.mark_flags_as_required(["workdir"])


def main(argv) -> None:
  del argv
  from mio_jax.analysis import hessian  # pylint: disable=g-import-not-at-top
  config, workdir = common.config_value(_CONFIG), _WORKDIR.value
  results = hessian.analyze_checkpoint(
      config, workdir, losses=_LOSSES.value, top_k=_TOP_K.value,
      params_subset=_PARAMS.value, batch_size=_BATCH_SIZE.value,
      data_source=_DATA.value, which=_WHICH.value,
      lanczos_steps=_LANCZOS_STEPS.value, num_probes=_NUM_PROBES.value,
      seed=config.seed)
  output_dir = _OUTPUT_DIR.value or os.path.join(workdir, hessian.OUTPUT_SUBDIR)
  for path in hessian.save_results(results, output_dir):
    print(f"Wrote {path}")


if __name__ == "__main__":
  common.run_command(main, config_from=("workdir",))
