"""The datasets mio_jax knows, by name: the table of their specs.

`DATASETS` maps the name of each built-in dataset to its `DatasetSpec`.
Split sizes come from the prepared dataset's own `dataset_info.json` when
there is one and from the table here otherwise (e.g. under
`tfds.testing.mock_data`, whose `info.splits` is empty).

`IMAGE_FOLDER` ("image_folder") is the user's own folder of class folders at
`config.dataset.path`: its spec (sizes, classes, mean/std) is read from its
prepared copy (`image_folder_spec`), not from the table. It is prepared
offline on first use (see `builders.image_folder`).

`LABEL_SUBSETS` maps the name of each fixed labelled subset that
fine-tuning reads (SimCLR's ImageNet-1K 1% and 10% lists) to its spec. They
are prepared by name like the datasets (`PREPARABLE_NAMES`, the names
`python -m mio_jax.cli.prepare --dataset=` takes) but are no
config.dataset.name.
"""
import dataclasses
from typing import Mapping

from mio_jax import errors
# Imported for its side effect: registers digits, tiny_imagenet, imagenet100,
# image_folder, so that every tfds_name below resolves.
from mio_jax.data import builders  # pylint: disable=unused-import

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """How one dataset is read.

  storage: "memory" decodes the split once into a uint8 array held in host
  RAM (fast, fine up to a few GB: digits, CIFAR, STL-10, Tiny ImageNet);
  "random_access" reads encoded JPEGs by index from ArrayRecord files
  (`tfds.data_source`) and decodes them per step (ImageNet scale).
  """
  tfds_name: str
  pretrain_split: str  # TFDS split expression, e.g. "train+unlabelled"
  eval_splits: Mapping[str, str]  # "train" / "test" -> TFDS split
  split_sizes: Mapping[str, int]  # fallback sizes by TFDS split
  num_classes: int
  mean: tuple[float, float, float]  # per channel, images in [0, 1]
  std: tuple[float, float, float]
  storage: str = "memory"
  eval_crop_fraction: float = 1.0  # 0.875: ImageNet resize + centre crop
  resize_on_load: bool = False  # digits: resize the tiny source once to S
  manual_files: tuple[str, ...] = ()  # archives the user supplies
  auto_prepare: bool = False  # built offline on first use

  def __hash__(self) -> int:
    # Hashable for caches keyed on the spec; the mapping fields are dicts and
    # the TFDS name (with its config) tells specs apart.
    return hash(self.tfds_name)


DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(
        tfds_name="digits", pretrain_split="train",
        eval_splits={"train": "train", "test": "test"},
        split_sizes={"train": 1500, "test": 297}, num_classes=10,
        # Measured on all 1,797 images scaled to [0, 1] (grey, so equal).
        mean=(0.3053, 0.3053, 0.3053), std=(0.3759, 0.3759, 0.3759),
        resize_on_load=True, auto_prepare=True),
    "cifar10": DatasetSpec(
        tfds_name="cifar10", pretrain_split="train",
        eval_splits={"train": "train", "test": "test"},
        split_sizes={"train": 50_000, "test": 10_000}, num_classes=10,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)),
    "cifar100": DatasetSpec(
        tfds_name="cifar100", pretrain_split="train",
        eval_splits={"train": "train", "test": "test"},
        split_sizes={"train": 50_000, "test": 10_000}, num_classes=100,
        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762)),
    "stl10": DatasetSpec(
        tfds_name="stl10", pretrain_split="train+unlabelled",
        eval_splits={"train": "train", "test": "test"},
        split_sizes={"train": 5_000, "test": 8_000, "unlabelled": 100_000},
        num_classes=10,
        mean=(0.4467, 0.4398, 0.4066), std=(0.2603, 0.2566, 0.2713)),
    "tiny_imagenet": DatasetSpec(
        tfds_name="tiny_imagenet", pretrain_split="train",
        eval_splits={"train": "train", "test": "validation"},
        split_sizes={"train": 100_000, "validation": 10_000}, num_classes=200,
        mean=(0.4802, 0.4481, 0.3975), std=(0.2770, 0.2691, 0.2821),
        manual_files=("tiny-imagenet-200.zip",)),
    "imagenet100": DatasetSpec(
        tfds_name="imagenet100", pretrain_split="train",
        eval_splits={"train": "train", "test": "validation"},
        split_sizes={"train": 126_689, "validation": 5_000}, num_classes=100,
        mean=_IMAGENET_MEAN, std=_IMAGENET_STD, storage="random_access",
        eval_crop_fraction=0.875,
        manual_files=("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")),
    "imagenet1k": DatasetSpec(
        tfds_name="imagenet2012", pretrain_split="train",
        eval_splits={"train": "train", "test": "validation"},
        split_sizes={"train": 1_281_167, "validation": 50_000},
        num_classes=1000, mean=_IMAGENET_MEAN, std=_IMAGENET_STD,
        storage="random_access", eval_crop_fraction=0.875,
        manual_files=("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")),
}

# SimCLR's class-balanced ImageNet-1K subsets (TFDS imagenet2012_subset),
# which fine-tuning at label_fraction 0.01 / 0.1 reads (data/labelled.py).
# TFDS builds them from the same archives as imagenet2012 and downloads
# only SimCLR's list of the subset's images (a text file, checksummed). Its
# validation split repeats imagenet2012's, which fine-tuning evaluates on.
# Train sizes: the lines of imagenet_subsets/1percent.txt and 10percent.txt
# in google-research/simclr.
LABEL_SUBSETS: dict[str, DatasetSpec] = {
    f"imagenet1k_subset_{size}": dataclasses.replace(
        DATASETS["imagenet1k"], tfds_name=f"imagenet2012_subset/{size}",
        split_sizes={"train": train, "validation": 50_000})
    for size, train in (("1pct", 12_811), ("10pct", 128_116))
}

IMAGE_FOLDER = "image_folder"
# Every valid config.dataset.name.
DATASET_NAMES: tuple[str, ...] = tuple(sorted((*DATASETS, IMAGE_FOLDER)))
# Every name `prepare_dataset` (python -m mio_jax.cli.prepare) takes; an
# image folder is prepared on first use instead.
PREPARABLE_NAMES: tuple[str, ...] = tuple(sorted((*DATASETS, *LABEL_SUBSETS)))

# The file format each storage needs (random access needs ArrayRecord).
STORAGE_FILE_FORMAT = {"memory": "tfrecord", "random_access": "array_record"}


def get_spec(name: str) -> DatasetSpec:
  """The spec of built-in dataset `name`.

  Raises:
    ValueError: `name` unknown (the message lists the valid names) or
      IMAGE_FOLDER, whose spec depends on the folder: use `dataset_spec`.
  """
  if name == IMAGE_FOLDER:
    raise ValueError(f"The spec of {IMAGE_FOLDER!r} depends on "
                     "config.dataset.path: use dataset_spec(config).")
  if name not in DATASETS:
    raise ValueError(f"Unknown dataset {name!r} (config.dataset.name). "
                     f"Valid names: {', '.join(DATASET_NAMES)}.")
  return DATASETS[name]


def preparable_spec(name: str) -> DatasetSpec:
  """The spec of a dataset or label subset `prepare_dataset` builds.

  Raises:
    InvalidValueError: (key "dataset") any other name; lists the names.
  """
  if name in DATASETS:
    return DATASETS[name]
  if name in LABEL_SUBSETS:
    return LABEL_SUBSETS[name]
  raise errors.InvalidValueError(
      "dataset", name, "is not a dataset mio_jax prepares",
      f"use one of {', '.join(PREPARABLE_NAMES)} ({IMAGE_FOLDER!r} is "
      "prepared on first use)")
