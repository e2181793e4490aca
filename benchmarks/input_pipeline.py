r"""Throughput of the two-view pretraining input pipeline on this machine.

    python benchmarks/input_pipeline.py [--steps=20] [--sizes=32,224]

Prints one JSON object per measurement: source images per second (each
yields two augmented views) in steady state, after warm-up batches.

The data is synthetic, of the right size and kind, so no dataset is needed:
  * 32 px: a CIFAR-shaped in-memory uint8 array (50,000 x 32x32x3), the
    CIFAR recipe (crop, flip, jitter, grayscale);
  * 224 px: ImageNet-like JPEG bytes (smooth random 500x375 images,
    quality 90, 66 KiB each; real ImageNet files average ~110 KB, so
    decoding here is somewhat cheaper) read by index like
    `tfds.data_source`, decoded per example, the full ImageNet recipe
    (plus blur p=0.5 and solarise p=0.2).
"host" stops at numpy batches; "device" also assembles the global sharded
jax.Arrays on the local devices (what the trainer receives).
"""
import argparse
import json
import os
import time

from mio_jax.data import pipeline  # first: quiets TF, hides accelerators
import jax
import numpy as np
import tensorflow as tf

from mio_jax import config_base
from mio_jax import mesh as mesh_lib


def _smooth_images(rng, count, height, width):
  """Natural-ish images: upsampled low-resolution noise plus grain."""
  low = rng.integers(0, 256, (count, height // 16, width // 16, 3))
  images = tf.image.resize(low.astype(np.float32), (height, width))
  images += rng.normal(0, 8, images.shape)
  return np.asarray(tf.cast(tf.clip_by_value(images, 0, 255), tf.uint8))


def _source(size: int, rng):
  if size <= 64:
    images = rng.integers(0, 256, (50_000, size, size, 3), dtype=np.uint8)
    return pipeline.ArraySource(images, rng.integers(0, 10, 50_000)), "cifar10"
  images = _smooth_images(rng, 256, 375, 500)
  jpegs = [tf.io.encode_jpeg(x, quality=90).numpy() for x in images]
  return pipeline.EncodedSource(_JpegRecords(jpegs, 50_000)), "imagenet1k"


class _JpegRecords:
  """Stands in for `tfds.data_source`: `num` records cycling over `jpegs`."""

  def __init__(self, jpegs, num):
    self.jpegs, self.num = jpegs, num

  def __len__(self):
    return self.num

  def __getitems__(self, keys):
    return [{"image": self.jpegs[k % len(self.jpegs)], "label": k % 1000}
            for k in keys]


def _config(size: int, dataset: str, batch_size: int):
  config = config_base.base_config()
  config.dataset.name = dataset
  config.dataset.image_size = size
  config.batch_size = batch_size
  if size >= 64:
    config.augment.blur_prob = 0.5
    config.augment.solarize_prob = 0.2
  return config


def _host_batches(source, config):
  """Single-process numpy batches (all rows of each global batch)."""
  rows = slice(0, config.batch_size)
  return pipeline.pretrain_dataset(source, config,
                                   rows=rows).as_numpy_iterator()


def _rate(iterator, steps: int, warmup: int, batch_size: int) -> float:
  for _ in range(warmup):
    jax.block_until_ready(next(iterator))
  start = time.perf_counter()
  for _ in range(steps):
    jax.block_until_ready(next(iterator))
  return steps * batch_size / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--sizes", default="32,224")
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  mesh = mesh_lib.make_data_mesh()
  for size in (int(s) for s in args.sizes.split(",")):
    source, dataset = _source(size, rng)
    batch_size = 256 if size <= 64 else 64
    config = _config(size, dataset, batch_size)
    for stage in ("host", "device"):
      # Built one at a time: tf.data starts prefetching at creation.
      iterator = _host_batches(source, config)
      if stage == "device":
        iterator = pipeline.global_batches(iterator, mesh, batch_size,
                                           prefetch=2)
      rate = _rate(iterator, args.steps, args.warmup, batch_size)
      del iterator
      print(json.dumps({
          "benchmark": "pretrain_input_pipeline", "stage": stage,
          "image_size": size, "data": f"synthetic {dataset}-like "
          + ("uint8 in memory" if size <= 64 else "JPEG, decoded per example"),
          "batch_size": batch_size, "images_per_s": round(rate, 1),
          "views_per_s": round(2 * rate, 1), "cpu_cores": os.cpu_count(),
          "devices": jax.device_count(), "steps": args.steps,
      }), flush=True)


if __name__ == "__main__":
  main()
