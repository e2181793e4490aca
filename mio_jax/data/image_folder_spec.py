"""The spec of the user's image folder: config.dataset.path, prepared.

`prepared_builder(config)` lists the folder as it is now, prepares it into
the data_dir when that state and image size has no prepared copy yet
(`builders.image_folder`), and returns the builder of the copy;
`spec_from_builder` reads the copy's sizes, classes and mean/std into a
`DatasetSpec`. `check_settings` checks the config keys the folder needs.
"""
import os

import ml_collections
from absl import logging
from etils import epath

from mio_jax import errors
from mio_jax.data import registry
from mio_jax.data.builders import image_folder
from mio_jax.host_tf import tfds


def check_settings(dataset_config: ml_collections.ConfigDict) -> None:
  """Raises InvalidValueError (keys relative to config.dataset) unless the
  keys an image folder needs are set and valid; reads no files."""
  if not dataset_config.path:
    raise errors.InvalidValueError(
        "path", dataset_config.path,
        f"is not set, but dataset.name={registry.IMAGE_FOLDER!r} needs it",
        "pass {key}=DIR, DIR holding train/<class name>/<image>")
  fraction = dataset_config.test_fraction
  if fraction is None or not 0 < fraction < 1:
    raise errors.InvalidValueError(
        "test_fraction", fraction, "must be between 0 and 1",
        "e.g. {key}=0.1")


def _image_folder_config(config: ml_collections.ConfigDict
                         ) -> image_folder.ImageFolderConfig:
  """The builder config of config.dataset.path as the folder is now."""
  check_settings(config.dataset)
  return image_folder.builder_config(
      config.dataset.path, image_size=int(config.dataset.image_size),
      test_fraction=float(config.dataset.test_fraction))


def prepared_builder(config: ml_collections.ConfigDict
                     ) -> tfds.core.DatasetBuilder:
  """The prepared copy of config.dataset.path; prepares it when missing.

  Raises:
    ImageFolderError, InvalidValueError: see `_image_folder_config` and
      `folder_listing.list_folder`; an unreadable image while preparing.
  """
  builder_config = _image_folder_config(config)
  # Explicit, so that the copy is looked for where it is written.
  data_dir = epath.Path(config.dataset.data_dir or
                        tfds.core.constants.DATA_DIR).expanduser()
  tfds_name = f"{registry.IMAGE_FOLDER}/{builder_config.name}"
  prepared = (data_dir / registry.IMAGE_FOLDER / builder_config.name /
              str(image_folder.ImageFolder.VERSION))
  if not (prepared / "dataset_info.json").exists():
    logging.info("Preparing %s as %s in %s.", builder_config.root, tfds_name,
                 data_dir)
    image_folder.ImageFolder(config=builder_config,
                             data_dir=os.fspath(data_dir)
                             ).download_and_prepare()
  # Read from the files: no folder listing or custom-config warning again.
  return tfds.builder(tfds_name, data_dir=os.fspath(data_dir))


def spec_from_builder(builder: tfds.core.DatasetBuilder
                      ) -> registry.DatasetSpec:
  """The spec of the prepared copy `builder` (see `prepared_builder`)."""
  info = builder.info
  return registry.DatasetSpec(
      tfds_name=f"{registry.IMAGE_FOLDER}/{builder.builder_config.name}",
      pretrain_split="train",
      eval_splits={"train": "train", "test": "test"},
      split_sizes={k: v.num_examples for k, v in info.splits.items()},
      num_classes=info.features["label"].num_classes,
      mean=tuple(info.metadata["mean"]), std=tuple(info.metadata["std"]),
      auto_prepare=True)
