r"""Compile a config's steps for a Cloud TPU slice, on a machine without one.

    python -m mio_jax.cli.tpu_compile --config=configs/imagenet1k.py \
        --topology=v4-8 [--config.key=value ...] [--out=report.json] \
        [--programs=pretrain,extract,linear_eval,finetune]

Builds the run as training does, compiles the pretraining step, feature
extraction and the supervised protocols' steps with libtpu for the slice
`--topology` names (gcloud's accelerator types: v4-8, v5litepod-8, v5p-8,
v6e-8, ...), and prints HBM per chip and roofline bounds (FLOPs and HBM
bytes per step against the chip's peaks), with the JSON in --out. A step
that does not fit ends the command with one line (the largest batch that
fits) and exit status 2, as does a missing libtpu (`make libtpu`). The work
is `mio_jax.aot.check.check`; see docs/performance.md, "Compiled for the TPU".
"""
import json
import pathlib

from absl import flags
from ml_collections import config_flags

from mio_jax.cli import common

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "The training config to compile.", lock_config=True)
_TOPOLOGY = flags.DEFINE_string(
    "topology", None, "Cloud TPU accelerator type as gcloud names it, "
    "e.g. v4-8, v4-32, v5litepod-8, v5p-8, v6e-8.")
_OUT = flags.DEFINE_string("out", None, "Where to write the JSON report.")
_PROGRAMS = flags.DEFINE_list(
    "programs", ["pretrain", "extract", "linear_eval", "finetune"],
    "Which steps to compile.")
_SEARCH_COMPILES = flags.DEFINE_integer(
    "search_compiles", 3, "At most this many extra compiles per step that "
    "does not fit, to find the largest batch that does.")


def main(argv) -> None:
  del argv
  # Only the compile-only TPU devices are wanted: JAX must not start a TPU
  # backend from libtpu at its first use.
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_platforms", "cpu")
  from mio_jax.aot import check  # pylint: disable=g-import-not-at-top
  from mio_jax.aot import topology  # pylint: disable=g-import-not-at-top
  if not _TOPOLOGY.value:
    common.usage_error("--topology is required, e.g. --topology=v4-8")
  tpu_slice = topology.parse(_TOPOLOGY.value)
  libtpu = topology.require_libtpu()
  config = common.config_value(_CONFIG, "configs/imagenet1k.py")
  config_name = config_flags.get_config_filename(flags.FLAGS["config"])
  devices = topology.compile_only_devices(tpu_slice, libtpu=libtpu)
  print(f"Compiling {config_name} for {tpu_slice.accelerator_type} "
        f"({tpu_slice.topology}, {len(devices)} chips) ...", flush=True)
  report = check.check(config, tpu_slice, devices=devices,
                       names=_PROGRAMS.value, config_name=config_name,
                       search_compiles=_SEARCH_COMPILES.value,
                       log=lambda line: print(line, flush=True))
  if _OUT.value:
    path = pathlib.Path(_OUT.value)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_json(), indent=1) + "\n")
  print(check.table(report), flush=True)
  if _OUT.value:
    print(f"Wrote {_OUT.value}", flush=True)
  message = check.does_not_fit_message(report)
  if message:
    raise check.DoesNotFitError(message)


if __name__ == "__main__":
  common.run_command(main)
