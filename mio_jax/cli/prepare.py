r"""Prepares a dataset's TFDS files (run once per data_dir).

    python -m mio_jax.cli.prepare --dataset=cifar10 [--data_dir=DIR]
    python -m mio_jax.cli.prepare --dataset=imagenet100 \
        --manual_dir=DIR_WITH_ILSVRC2012_TARS [--data_dir=DIR]

ImageNet-scale sets are written as ArrayRecord (read by index); the others
as TFRecord (decoded into memory once per run).
"""
from absl import flags

from mio_jax.cli import common

_DATASET = flags.DEFINE_string(
    "dataset", None, "Dataset to prepare (a config.dataset.name, e.g. cifar10).",
    required=True)
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "TFDS data_dir (default: $TFDS_DATA_DIR or "
    "~/tensorflow_datasets).")
_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", None, "Folder with the archives the dataset needs "
    "(tiny-imagenet-200.zip, ILSVRC2012_img_{train,val}.tar).")


def main(argv) -> None:
  del argv
  from mio_jax import data  # pylint: disable=g-import-not-at-top
  builder = data.prepare_dataset(_DATASET.value, data_dir=_DATA_DIR.value,
                                 manual_dir=_MANUAL_DIR.value)
  print(f"Prepared {_DATASET.value} in {builder.data_path}: "
        f"{ {k: v.num_examples for k, v in builder.info.splits.items()} }")


if __name__ == "__main__":
  common.run_command(main)
