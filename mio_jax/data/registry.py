"""The datasets mio_jax knows, how big they are, and whether they are prepared.

`DATASETS` maps the name of each built-in dataset to its `DatasetSpec`.
Split sizes come from the prepared dataset's own `dataset_info.json` when
there is one and from the table here otherwise (e.g. under
`tfds.testing.mock_data`, whose `info.splits` is empty).

`IMAGE_FOLDER` ("image_folder") is the user's own folder of class folders at
`config.dataset.path`: its spec (sizes, classes, mean/std) is read from its
prepared copy, so `dataset_spec(config)` gives it, not the table. It is
prepared offline on first use (see `builders.image_folder`).

`LABEL_SUBSETS` maps the name of each fixed labelled subset that
fine-tuning reads (SimCLR's ImageNet-1K 1% and 10% lists) to its spec. They
are prepared by name like the datasets (`PREPARABLE_NAMES`, the names
`python -m mio_jax.cli.prepare --dataset=` takes) but are no
config.dataset.name.

`ensure_prepared(config)` and `ensure_label_subset_prepared` only look at
files (the builder's `data_path/dataset_info.json`), never at the network:
an unguarded `tfds.load` of a missing dataset retries the network for
minutes.
"""
import dataclasses
import os
import shlex
import threading
from typing import Mapping, NamedTuple, Optional

import ml_collections
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from mio_jax import errors
# Imported for its side effect: registers digits, tiny_imagenet, imagenet100,
# image_folder.
from mio_jax.data import builders  # pylint: disable=unused-import
from mio_jax.data.builders import image_folder

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class DatasetNotPreparedError(errors.UserError):
  """TFDS files missing or unusable; the message gives the commands."""


class DataDirUnreachableError(errors.UserError):
  """config.dataset.data_dir (a bucket) cannot be read."""


# An unreachable bucket makes TFDS's file system retry for about a minute
# (47 s measured here without network); the user hears within this.
DATA_DIR_TIMEOUT_S = 10.0


def check_data_dir(data_dir: Optional[str], *,
                   timeout_s: float = DATA_DIR_TIMEOUT_S) -> None:
  """Raises DataDirUnreachableError unless a remote data_dir answers in time.

  Local paths are not checked (TFDS creates them).
  """
  if not data_dir or "://" not in data_dir:
    return
  outcome = {}

  def probe():
    try:
      outcome["exists"] = epath.Path(data_dir).exists()
    except Exception as e:  # pylint: disable=broad-except
      outcome["error"] = e

  # A daemon thread: a probe stuck in retries must not hold up the exit.
  thread = threading.Thread(target=probe, daemon=True)
  thread.start()
  thread.join(timeout_s)
  fix = ("check the bucket name and your credentials (gcloud auth "
         "application-default login), or use a local config.dataset.data_dir")
  if thread.is_alive():
    raise DataDirUnreachableError(
        f"config.dataset.data_dir={data_dir!r} did not answer within "
        f"{timeout_s:.0f} s; {fix}")
  if "error" in outcome:
    reason = " ".join(str(outcome["error"]).split())[:200]
    raise DataDirUnreachableError(
        f"config.dataset.data_dir={data_dir!r} cannot be read ({reason}); {fix}")


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


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the trainer and evaluators need to know about a dataset."""
  name: str
  num_pretrain_examples: int
  num_classes: int
  image_size: int
  eval_splits: Mapping[str, str]  # "train" / "test" -> TFDS split name
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  num_eval_examples: Mapping[str, int]  # "train" / "test" -> size


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


def _preparable_spec(name: str) -> DatasetSpec:
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


def _check_image_folder_settings(dataset_config: ml_collections.ConfigDict
                                 ) -> None:
  if not dataset_config.path:
    raise errors.InvalidValueError(
        "path", dataset_config.path,
        f"is not set, but dataset.name={IMAGE_FOLDER!r} needs it",
        "pass {key}=DIR, DIR holding train/<class name>/<image>")
  fraction = dataset_config.test_fraction
  if fraction is None or not 0 < fraction < 1:
    raise errors.InvalidValueError(
        "test_fraction", fraction, "must be between 0 and 1",
        "e.g. {key}=0.1")


def check_config(dataset_config: ml_collections.ConfigDict) -> None:
  """Raises a UserError for an impossible `config.dataset` (reads no data).

  InvalidValueError keys are relative to config.dataset. For an image
  folder: path set, test_fraction in (0, 1), and the folder with its
  train/ folder there (ImageFolderError); its contents are checked when it
  is listed at first use.
  """
  errors.check_one_of("name", dataset_config.name, DATASET_NAMES)
  errors.check_positive("image_size", dataset_config.image_size)
  if dataset_config.name == IMAGE_FOLDER:
    _check_image_folder_settings(dataset_config)
    image_folder.check_root(dataset_config.path)


def _image_folder_config(config: ml_collections.ConfigDict
                         ) -> image_folder.ImageFolderConfig:
  """The builder config of config.dataset.path as the folder is now."""
  _check_image_folder_settings(config.dataset)
  return image_folder.builder_config(
      config.dataset.path, image_size=int(config.dataset.image_size),
      test_fraction=float(config.dataset.test_fraction))


def _prepared_image_folder(config: ml_collections.ConfigDict
                           ) -> tfds.core.DatasetBuilder:
  """The prepared copy of config.dataset.path; prepares it when missing.

  Raises:
    ImageFolderError, InvalidValueError: see `_image_folder_config` and
      `image_folder.list_folder`; an unreadable image while preparing.
  """
  builder_config = _image_folder_config(config)
  # Explicit, so that the copy is looked for where it is written.
  data_dir = epath.Path(config.dataset.data_dir or
                        tfds.core.constants.DATA_DIR).expanduser()
  tfds_name = f"{IMAGE_FOLDER}/{builder_config.name}"
  prepared = (data_dir / IMAGE_FOLDER / builder_config.name /
              str(image_folder.ImageFolder.VERSION))
  if not (prepared / "dataset_info.json").exists():
    logging.info("Preparing %s as %s in %s.", builder_config.root, tfds_name,
                 data_dir)
    image_folder.ImageFolder(config=builder_config,
                             data_dir=os.fspath(data_dir)
                             ).download_and_prepare()
  # Read from the files: no folder listing or custom-config warning again.
  return tfds.builder(tfds_name, data_dir=os.fspath(data_dir))


def _image_folder_spec(builder: tfds.core.DatasetBuilder) -> DatasetSpec:
  info = builder.info
  return DatasetSpec(
      tfds_name=f"{IMAGE_FOLDER}/{builder.builder_config.name}",
      pretrain_split="train",
      eval_splits={"train": "train", "test": "test"},
      split_sizes={k: v.num_examples for k, v in info.splits.items()},
      num_classes=info.features["label"].num_classes,
      mean=tuple(info.metadata["mean"]), std=tuple(info.metadata["std"]),
      auto_prepare=True)


def dataset_spec(config: ml_collections.ConfigDict) -> DatasetSpec:
  """The spec of config.dataset.name, for every name in DATASET_NAMES.

  An image folder is listed (a walk of the folder) and prepared on first
  use; its spec comes from that prepared copy.

  Raises:
    ValueError: unknown name.
    UserError: an image folder that cannot be used (the message names the
      path and the fix).
  """
  if config.dataset.name == IMAGE_FOLDER:
    spec = _image_folder_spec(_prepared_image_folder(config))
  else:
    spec = get_spec(config.dataset.name)
  if config.dataset.pretrain_split:
    spec = dataclasses.replace(spec,
                               pretrain_split=config.dataset.pretrain_split)
  return spec


def _builder(spec: DatasetSpec,
             data_dir: Optional[str]) -> tfds.core.DatasetBuilder:
  return tfds.builder(spec.tfds_name, data_dir=data_dir)


def _is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
  return (builder.data_path / "dataset_info.json").exists()


class _SplitLength(NamedTuple):
  """What TFDS's ReadInstruction needs to know of a split."""
  num_examples: int


def split_size(spec: DatasetSpec, split: str,
               data_dir: Optional[str] = None) -> int:
  """Examples in a split expression such as "train+unlabelled", "train[:80%]".

  Split lengths come from the prepared dataset's info when it lists the
  split, else from the spec's table; TFDS's own ReadInstruction resolves
  slices, so the count is the one TFDS reads.
  """
  builder = _builder(spec, data_dir)
  known = builder.info.splits if _is_prepared(builder) else {}
  lengths = {name: _SplitLength(known[name].num_examples if name in known
                                else size)
             for name, size in spec.split_sizes.items()}
  lengths.update({name: _SplitLength(info.num_examples)
                  for name, info in dict(known).items()})
  try:
    parts = tfds.core.ReadInstruction.from_spec(split).to_absolute(lengths)
  except (ValueError, KeyError, AssertionError) as e:
    raise errors.InvalidValueError(
        "pretrain_split", split, f"is not a split of {spec.tfds_name} ({e})",
        f"use one of {', '.join(sorted(lengths))}, optionally sliced, e.g. "
        "train[:80%]") from None
  total = 0
  for part in parts:
    size = lengths[part.splitname].num_examples
    start = 0 if part.from_ is None else part.from_
    end = size if part.to is None else part.to
    total += max(0, end - start)
  return total


def dataset_info(config: ml_collections.ConfigDict) -> DatasetInfo:
  """Sizes, classes and normalisation of `config.dataset.name`.

  Prepares an image folder on first use (see `dataset_spec`).
  """
  spec = dataset_spec(config)
  data_dir = config.dataset.data_dir
  return DatasetInfo(
      name=config.dataset.name,
      num_pretrain_examples=split_size(spec, spec.pretrain_split, data_dir),
      num_classes=spec.num_classes,
      image_size=int(config.dataset.image_size),
      eval_splits=dict(spec.eval_splits),
      mean=spec.mean,
      std=spec.std,
      num_eval_examples={k: split_size(spec, v, data_dir)
                         for k, v in spec.eval_splits.items()},
  )


def prepare_command(name: str, data_dir: Optional[str] = None,
                    manual_dir: Optional[str] = None) -> str:
  """The shell command that prepares `name` (one of PREPARABLE_NAMES)."""
  spec = _preparable_spec(name)
  parts = ["python", "-m", "mio_jax.cli.prepare", f"--dataset={name}"]
  if data_dir:
    parts.append(f"--data_dir={data_dir}")
  if spec.manual_files:
    parts.append(f"--manual_dir={manual_dir or 'DIR_WITH_ARCHIVES'}")
  return shlex.join(parts)


def _not_prepared_message(name: str, spec: DatasetSpec, builder,
                          data_dir: Optional[str],
                          manual_dir: Optional[str]) -> str:
  lines = [f"Dataset {name!r} (TFDS {spec.tfds_name!r}) is not prepared in "
           f"{builder.data_dir_root} (looked for "
           f"{builder.data_path / 'dataset_info.json'})."]
  if spec.manual_files:
    lines.append("Put " + " and ".join(spec.manual_files) + " in a folder "
                 "(they cannot be downloaded automatically), then:")
    if name in LABEL_SUBSETS:
      lines.append("(this also downloads SimCLR's list of the subset's "
                   "images, a text file from GitHub)")
  else:
    lines.append("Prepare it (downloads the data) with:")
  lines.append("  " + prepare_command(name, data_dir, manual_dir))
  lines.append("or point config.dataset.data_dir at a TFDS data_dir that "
               "already holds it.")
  return "\n".join(lines)


def ensure_prepared(config: ml_collections.ConfigDict) -> None:
  """Raises DatasetNotPreparedError (fast, no network) unless data is ready.

  Digits and image folders need no network and are built on first use.
  """
  name = config.dataset.name
  check_data_dir(config.dataset.data_dir)
  if name == IMAGE_FOLDER:
    _prepared_image_folder(config)
    return
  spec = get_spec(name)
  data_dir = config.dataset.data_dir
  builder = _builder(spec, data_dir)
  if spec.auto_prepare and not _is_prepared(builder):
    logging.info("Preparing %s offline in %s.", name, builder.data_dir_root)
    tfds.disable_progress_bar()  # a sub-second build: no progress bars
    try:
      prepare_dataset(name, data_dir=data_dir)
    finally:
      tfds.enable_progress_bar()
    return
  _check_prepared(name, spec, builder, data_dir, config.dataset.manual_dir)


def ensure_label_subset_prepared(tfds_name: str,
                                 data_dir: Optional[str]) -> None:
  """Raises DatasetNotPreparedError (fast, no network) unless the label
  subset with TFDS name `tfds_name` (e.g. "imagenet2012_subset/1pct") is
  prepared in data_dir as ArrayRecord; the message gives the command.

  Raises:
    ValueError: `tfds_name` is no spec's in LABEL_SUBSETS (a bug of ours).
  """
  names = [name for name, spec in LABEL_SUBSETS.items()
           if spec.tfds_name == tfds_name]
  if not names:
    raise ValueError(f"{tfds_name!r} is not the TFDS name of a label subset "
                     f"({', '.join(LABEL_SUBSETS)})")
  spec = LABEL_SUBSETS[names[0]]
  _check_prepared(names[0], spec, _builder(spec, data_dir), data_dir, None)


def _check_prepared(name: str, spec: DatasetSpec,
                    builder: tfds.core.DatasetBuilder, data_dir: Optional[str],
                    manual_dir: Optional[str]) -> None:
  """Raises DatasetNotPreparedError unless `builder`'s files are there, in
  the format `spec.storage` reads."""
  if not _is_prepared(builder):
    raise DatasetNotPreparedError(_not_prepared_message(
        name, spec, builder, data_dir, manual_dir))
  wanted = STORAGE_FILE_FORMAT[spec.storage]
  have = builder.info.file_format
  if spec.storage == "random_access" and (have is None or
                                          have.value != wanted):
    raise DatasetNotPreparedError(
        f"Dataset {name!r} in {builder.data_path} is stored as "
        f"{have.value if have else 'unknown'}, but mio_jax reads it by index "
        f"and needs {wanted} files. Rebuild it with\n  "
        f"{prepare_command(name, data_dir, manual_dir)}\n"
        f"into another data_dir (or convert the existing files with TFDS's "
        f"convert_format to {wanted}).")


def prepare_dataset(name: str, data_dir: Optional[str] = None,
                    manual_dir: Optional[str] = None
                    ) -> tfds.core.DatasetBuilder:
  """Builds the TFDS files of `name`, one of PREPARABLE_NAMES (downloads
  unless manual/offline), as ArrayRecord for random access.

  Raises:
    InvalidValueError: an unknown name (the message lists the names).
    DatasetNotPreparedError: archives missing from `manual_dir` (local or
      gs://).
  """
  spec = _preparable_spec(name)
  if spec.manual_files and not spec.auto_prepare:
    missing = [f for f in spec.manual_files
               if not manual_dir or not (epath.Path(manual_dir) / f).exists()]
    if missing:
      raise DatasetNotPreparedError(
          f"preparing {name!r} needs {', '.join(missing)} in --manual_dir "
          f"(got {manual_dir!r}); download them and pass the folder holding "
          "them")
  builder = tfds.builder(spec.tfds_name, data_dir=data_dir,
                         file_format=STORAGE_FILE_FORMAT[spec.storage])
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def prepare_digits(data_dir: Optional[str] = None) -> tfds.core.DatasetBuilder:
  """Builds the offline digits dataset (1,500 train / 297 test) in data_dir."""
  return prepare_dataset("digits", data_dir=data_dir)
