"""Input pipelines of mio_jax: datasets, two-view augmentation, eval passes.

TensorFlow only feeds data here: it is hidden from every accelerator and
kept quiet before anything else imports it.

  dataset_info(config) -> DatasetInfo
  pretrain_batches(config, mesh, *, start_step=0) -> Iterator[dict]
  pretrain_steps_per_epoch(config) -> int
  eval_batches(config, mesh, split) -> Iterator[dict]
  split_passes(config, mesh, tfds_split) -> () -> Iterator[dict]  # passes
  ensure_prepared(config)  # raises DatasetNotPreparedError with the fix
  prepare_digits(data_dir=None), prepare_dataset(name, data_dir, manual_dir)
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position

# TF must never allocate GPU memory or claim a TPU JAX needs.
tf.config.set_visible_devices([], "GPU")

# pylint: disable=g-import-not-at-top,wrong-import-position
from mio_jax.data.dataset import DatasetInfo
from mio_jax.data.dataset import check_config
from mio_jax.data.dataset import dataset_info
from mio_jax.data.dataset import dataset_spec
from mio_jax.data.pipeline import eval_batches
from mio_jax.data.pipeline import pretrain_batches
from mio_jax.data.pipeline import pretrain_steps_per_epoch
from mio_jax.data.pipeline import split_passes
from mio_jax.data.preparation import DatasetNotPreparedError
from mio_jax.data.preparation import ensure_prepared
from mio_jax.data.preparation import prepare_dataset
from mio_jax.data.preparation import prepare_digits
from mio_jax.data.registry import DATASET_NAMES
from mio_jax.data.registry import DATASETS

__all__ = [
    "DATASET_NAMES", "DATASETS", "DatasetInfo", "DatasetNotPreparedError",
    "check_config", "dataset_info", "dataset_spec",
    "ensure_prepared", "eval_batches", "prepare_dataset", "prepare_digits",
    "pretrain_batches", "pretrain_steps_per_epoch", "split_passes",
]
