"""TensorFlow and TFDS, on the host only: what mio_jax imports them from.

TensorFlow feeds data (mio_jax.data) and writes TensorBoard events
(metric_logging). Every module that needs it or TFDS imports them from
here, so that whichever loads TensorFlow first, it is quiet and never
allocates GPU memory or claims a TPU that JAX needs. Modules that need
neither (`data.indexing`, `data.augment_recipe`, `data.device_augment`)
load no TensorFlow.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

# pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow as tf
import tensorflow_datasets as tfds

tf.config.set_visible_devices([], "GPU")

__all__ = ["tf", "tfds"]
