r"""Prepares a dataset's TFDS files (run once per data_dir).

    python -m mio_jax.cli.prepare --dataset=cifar10 [--data_dir=DIR]
    python -m mio_jax.cli.prepare --dataset=imagenet100 \
        --manual_dir=DIR_WITH_ILSVRC2012_TARS [--data_dir=DIR]
    python -m mio_jax.cli.prepare --dataset=imagenet1k_subset_1pct \
        --manual_dir=DIR_WITH_ILSVRC2012_TARS [--data_dir=DIR]

ImageNet-scale sets are written as ArrayRecord (read by index); the others
as TFRecord (decoded into memory once per run). The ImageNet-1K subsets are
SimCLR's 1% / 10% label lists that fine-tuning reads at
`--config.finetune.label_fraction=0.01` / `0.1`.
"""
from absl import flags

from mio_jax.cli import common

# Written out, not read from mio_jax.data.registry.PREPARABLE_NAMES: --help
# must not wait for TensorFlow. tests/cli/test_prepare.py keeps them equal.
_NAMES_HELP = (
    "cifar10, cifar100, stl10 (downloaded); tiny_imagenet "
    "(tiny-imagenet-200.zip); imagenet100, imagenet1k, and "
    "imagenet1k_subset_1pct / imagenet1k_subset_10pct (SimCLR's label "
    "subsets for fine-tuning; their image lists are downloaded) from "
    "ILSVRC2012_img_{train,val}.tar; digits (offline). Image folders are "
    "prepared on first use.")

_DATASET = flags.DEFINE_string(
    "dataset", None, f"Dataset to prepare: {_NAMES_HELP}", required=True)
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "TFDS data_dir, local or gs:// (default: "
    "$TFDS_DATA_DIR or ~/tensorflow_datasets).")
_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", None, "Folder (local or gs://) with the archives the "
    "dataset needs (tiny-imagenet-200.zip, ILSVRC2012_img_{train,val}.tar).")


def main(argv) -> None:
  del argv
  from mio_jax import data  # pylint: disable=g-import-not-at-top
  builder = data.prepare_dataset(_DATASET.value, data_dir=_DATA_DIR.value,
                                 manual_dir=_MANUAL_DIR.value)
  print(f"Prepared {_DATASET.value} in {builder.data_path}: "
        f"{ {k: v.num_examples for k, v in builder.info.splits.items()} }")


if __name__ == "__main__":
  common.run_command(main)
