"""The dataset a config names: its check, its spec and its sizes.

`check_config(config.dataset)` stops an impossible dataset section before
any data is read. `dataset_spec(config)` is the spec of any name in
`registry.DATASET_NAMES` (an image folder's is read from its prepared copy,
`image_folder_spec`), with config.dataset's split overrides applied;
`dataset_info(config)` adds the split sizes, counted as TFDS reads them.
"""
import dataclasses
from typing import Mapping, NamedTuple, Optional

import ml_collections

from mio_jax import errors
from mio_jax.data import image_folder_spec
from mio_jax.data import preparation
from mio_jax.data import registry
from mio_jax.data.builders import folder_listing
from mio_jax.host_tf import tfds


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


def check_config(dataset_config: ml_collections.ConfigDict) -> None:
  """Raises a UserError for an impossible `config.dataset` (reads no data).

  InvalidValueError keys are relative to config.dataset. For an image
  folder: path set, test_fraction in (0, 1), and the folder with its
  train/ folder there (ImageFolderError); its contents are checked when it
  is listed at first use.
  """
  errors.check_one_of("name", dataset_config.name, registry.DATASET_NAMES)
  errors.check_positive("image_size", dataset_config.image_size)
  if dataset_config.name == registry.IMAGE_FOLDER:
    image_folder_spec.check_settings(dataset_config)
    folder_listing.check_root(dataset_config.path)


def dataset_spec(config: ml_collections.ConfigDict) -> registry.DatasetSpec:
  """The spec of config.dataset.name, for every name in registry.DATASET_NAMES.

  An image folder is listed (a walk of the folder) and prepared on first
  use; its spec comes from that prepared copy.

  Raises:
    ValueError: unknown name.
    UserError: an image folder that cannot be used (the message names the
      path and the fix).
  """
  if config.dataset.name == registry.IMAGE_FOLDER:
    spec = image_folder_spec.spec_from_builder(
        image_folder_spec.prepared_builder(config))
  else:
    spec = registry.get_spec(config.dataset.name)
  if config.dataset.pretrain_split:
    spec = dataclasses.replace(spec,
                               pretrain_split=config.dataset.pretrain_split)
  eval_splits = {"train": config.dataset.eval_train_split,
                 "test": config.dataset.eval_test_split}
  if any(eval_splits.values()):
    spec = dataclasses.replace(spec, eval_splits={
        **spec.eval_splits,
        **{name: split for name, split in eval_splits.items() if split}})
  return spec


class _SplitLength(NamedTuple):
  """What TFDS's ReadInstruction needs to know of a split."""
  num_examples: int


def split_lengths(spec: registry.DatasetSpec,
                  data_dir: Optional[str] = None) -> dict[str, int]:
  """Examples per split: the prepared dataset's info where it lists the
  split, else the spec's table."""
  builder = preparation.tfds_builder(spec, data_dir)
  known = builder.info.splits if preparation.is_prepared(builder) else {}
  return {**spec.split_sizes,
          **{name: info.num_examples for name, info in dict(known).items()}}


def split_size(spec: registry.DatasetSpec, split: str,
               lengths: Mapping[str, int], *,
               key: str = "pretrain_split") -> int:
  """Examples in a split expression such as "train+unlabelled", "train[:80%]".

  lengths: `split_lengths(spec, data_dir)`. TFDS's own ReadInstruction
  resolves slices, so the count is the one TFDS reads. Raises
  InvalidValueError naming config `key` for a split the data set lacks.
  """
  lengths = {name: _SplitLength(size) for name, size in lengths.items()}
  try:
    parts = tfds.core.ReadInstruction.from_spec(split).to_absolute(lengths)
  except (ValueError, KeyError, AssertionError) as e:
    raise errors.InvalidValueError(
        key, split, f"is not a split of {spec.tfds_name} ({e})",
        f"use one of {', '.join(sorted(lengths))}, optionally sliced, e.g. "
        "train[:80%]") from None
  total = 0
  for part in parts:
    size = lengths[part.splitname].num_examples
    start = 0 if part.from_ is None else part.from_
    end = size if part.to is None else part.to
    total += max(0, end - start)
  return total


def prepared_identity(config: ml_collections.ConfigDict) -> str:
  """The data set as a resume record holds it: TFDS name, version, sizes.

  E.g. "cifar10@3.0.2 (test 10000, train 50000)". config.dataset.data_dir
  may change freely between a run and its resume; another version or
  other split sizes of the data found there show here, so the resume is
  refused. An image folder's TFDS name holds a fingerprint of its files.
  """
  spec = dataset_spec(config)
  data_dir = config.dataset.data_dir
  version = preparation.tfds_builder(spec, data_dir).info.version
  sizes = ", ".join(f"{split} {size}" for split, size
                    in sorted(split_lengths(spec, data_dir).items()))
  return f"{spec.tfds_name}@{version} ({sizes})"


def dataset_info(config: ml_collections.ConfigDict) -> DatasetInfo:
  """Sizes, classes and normalisation of `config.dataset.name`.

  Prepares an image folder on first use (see `dataset_spec`).
  """
  spec = dataset_spec(config)
  lengths = split_lengths(spec, config.dataset.data_dir)
  return DatasetInfo(
      name=config.dataset.name,
      num_pretrain_examples=split_size(spec, spec.pretrain_split, lengths),
      num_classes=spec.num_classes,
      image_size=int(config.dataset.image_size),
      eval_splits=dict(spec.eval_splits),
      mean=spec.mean,
      std=spec.std,
      num_eval_examples={k: split_size(spec, v, lengths,
                                       key=f"eval_{k}_split")
                         for k, v in spec.eval_splits.items()},
  )

