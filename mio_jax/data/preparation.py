"""Preparing a dataset's TFDS files, and whether they are prepared.

`prepare_dataset(name, ...)` builds the files of one of
`registry.PREPARABLE_NAMES` (what `python -m mio_jax.cli.prepare` runs).
`ensure_prepared(config)` and `ensure_label_subset_prepared` only look at
files (the builder's `data_path/dataset_info.json`), never at the network:
an unguarded `tfds.load` of a missing dataset retries the network for
minutes. What is missing stops with a DatasetNotPreparedError that holds
the command which prepares it; digits and image folders are built offline
on first use instead.
"""
import shlex
from typing import Optional

import ml_collections
from absl import logging
from etils import epath

from mio_jax import errors
from mio_jax.data import data_dir as data_dir_lib
from mio_jax.data import image_folder_spec
from mio_jax.data import registry
from mio_jax.host_tf import tfds


class DatasetNotPreparedError(errors.UserError):
  """TFDS files missing or unusable; the message gives the commands."""


def tfds_builder(spec: registry.DatasetSpec,
                 data_dir: Optional[str]) -> tfds.core.DatasetBuilder:
  """The TFDS builder of `spec` in data_dir (None: TFDS's default)."""
  return tfds.builder(spec.tfds_name, data_dir=data_dir)


def is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
  """Whether `builder`'s files are there (a file check, no network)."""
  return (builder.data_path / "dataset_info.json").exists()


def prepare_command(name: str, data_dir: Optional[str] = None,
                    manual_dir: Optional[str] = None) -> str:
  """The shell command that prepares `name`, one of PREPARABLE_NAMES."""
  spec = registry.preparable_spec(name)
  parts = ["python", "-m", "mio_jax.cli.prepare", f"--dataset={name}"]
  if data_dir:
    parts.append(f"--data_dir={data_dir}")
  if spec.manual_files:
    parts.append(f"--manual_dir={manual_dir or 'DIR_WITH_ARCHIVES'}")
  return shlex.join(parts)


def _not_prepared_message(name: str, spec: registry.DatasetSpec, builder,
                          data_dir: Optional[str],
                          manual_dir: Optional[str]) -> str:
  lines = [f"Dataset {name!r} (TFDS {spec.tfds_name!r}) is not prepared in "
           f"{builder.data_dir_root} (looked for "
           f"{builder.data_path / 'dataset_info.json'})."]
  if spec.manual_files:
    lines.append("Put " + " and ".join(spec.manual_files) + " in a folder "
                 "(they cannot be downloaded automatically), then:")
    if name in registry.LABEL_SUBSETS:
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
  data_dir_lib.check_data_dir(config.dataset.data_dir)
  if name == registry.IMAGE_FOLDER:
    image_folder_spec.prepared_builder(config)
    return
  spec = registry.get_spec(name)
  data_dir = config.dataset.data_dir
  builder = tfds_builder(spec, data_dir)
  if spec.auto_prepare and not is_prepared(builder):
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
  names = [name for name, spec in registry.LABEL_SUBSETS.items()
           if spec.tfds_name == tfds_name]
  if not names:
    raise ValueError(f"{tfds_name!r} is not the TFDS name of a label subset "
                     f"({', '.join(registry.LABEL_SUBSETS)})")
  spec = registry.LABEL_SUBSETS[names[0]]
  _check_prepared(names[0], spec, tfds_builder(spec, data_dir), data_dir, None)


def _check_prepared(name: str, spec: registry.DatasetSpec,
                    builder: tfds.core.DatasetBuilder, data_dir: Optional[str],
                    manual_dir: Optional[str]) -> None:
  """Raises DatasetNotPreparedError unless `builder`'s files are there, in
  the format `spec.storage` reads."""
  if not is_prepared(builder):
    raise DatasetNotPreparedError(_not_prepared_message(
        name, spec, builder, data_dir, manual_dir))
  wanted = registry.STORAGE_FILE_FORMAT[spec.storage]
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
  spec = registry.preparable_spec(name)
  if spec.manual_files and not spec.auto_prepare:
    missing = [f for f in spec.manual_files
               if not manual_dir or not (epath.Path(manual_dir) / f).exists()]
    if missing:
      raise DatasetNotPreparedError(
          f"preparing {name!r} needs {', '.join(missing)} in --manual_dir "
          f"(got {manual_dir!r}); download them and pass the folder holding "
          "them")
  file_format = registry.STORAGE_FILE_FORMAT[spec.storage]
  builder = tfds.builder(spec.tfds_name, data_dir=data_dir,
                         file_format=file_format)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def prepare_digits(data_dir: Optional[str] = None) -> tfds.core.DatasetBuilder:
  """Builds the offline digits dataset (1,500 train / 297 test) in data_dir."""
  return prepare_dataset("digits", data_dir=data_dir)
