"""The config a workdir's checkpoints were made with, rebuilt.

Pretraining records the whole config beside its checkpoints
(`checkpointing.METADATA_FILE`, `resume_guard.record`), so a command that
reads a trained workdir needs no --config: the command line (`cli.common`)
loads this file as the config file `recorded_config.py:WORKDIR`, and
`--config.key=value` overrides apply on top as usual.

A key the record lacks (added to mio_jax after the run) keeps its default,
as the resume guard reads it; recorded values that are not config keys
(the data set's derived size and identity) are left out.
"""
from typing import Optional

import ml_collections
from etils import epath

from mio_jax import checkpointing
from mio_jax import config_base
from mio_jax import errors
from mio_jax import resume_guard


class NoRecordedConfigError(errors.UserError):
  """The workdir holds no record of a whole config."""


def metadata_path(workdir: str) -> epath.Path:
  return checkpointing.checkpoint_dir(workdir) / checkpointing.METADATA_FILE


def recorded_config(workdir: str) -> Optional[ml_collections.ConfigDict]:
  """The config recorded in `workdir`, or None where there is none.

  None also for a record of an earlier build, which holds chosen keys only.
  """
  metadata = checkpointing.read_metadata(workdir)
  if metadata is None:
    return None
  settings, partial = resume_guard.stored_settings(metadata)
  if partial:
    return None
  config = config_base.base_config()
  for key, value in settings.items():
    *sections, name = key.split(".")
    node = config
    for section in sections:
      node = node.get(section) if isinstance(node, ml_collections.ConfigDict) \
          else None
    if isinstance(node, ml_collections.ConfigDict) and name in node:
      node[name] = value
  return config


def get_config(workdir: str) -> ml_collections.ConfigDict:
  """The config-file entry point: `--config=.../recorded_config.py:WORKDIR`.

  Raises NoRecordedConfigError where `workdir` records none.
  """
  config = recorded_config(workdir)
  if config is None:
    raise NoRecordedConfigError(
        f"{workdir} holds no recorded config ({metadata_path(workdir)} is "
        "missing or of an earlier build)")
  return config
