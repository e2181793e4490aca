r"""Throughput of the two-view pretraining input pipeline on this machine.

    python benchmarks/input_pipeline.py [--steps=20] [--sizes=32,224]
        [--modes=host_colour,on_device] [--images=512] [--quick]

Prints one JSON object per measurement: source images per second (each
yields two views) in steady state after warm-up batches, and images per
CPU-second of this process (all its threads): the per-core rate, which
compares across machine loads where the wall rate does not.

The data is synthetic, of the right size and kind, so no dataset is needed:
  * 32 px: a CIFAR-shaped in-memory uint8 array (50,000 x 32x32x3), the
    CIFAR recipe (crop, flip, jitter, grayscale);
  * 224 px: `--images` ImageNet-like JPEGs (smooth random images of
    400-500 x 333-500 px, quality 90, ~70 KiB; real ImageNet files average
    ~110 KB, so decoding here is somewhat cheaper) written as a TFDS
    ArrayRecord dataset in a temporary directory and read by index with
    `tfds.data_source`, as imagenet1k is; the ImageNet recipe plus blur
    p=0.5 and solarise p=0.2.
Modes: "host_colour" runs every op on the host (config.augment.on_device
False); "on_device" stops the host after decode, crop, resize and flip
(uint8 views) and times `device_augment.augment_batch` separately (stage
"device_augment", on this machine's own JAX devices).
Stages: "host" stops at numpy batches; "device" also assembles the global
sharded jax.Arrays (what the trainer receives).
"""
import argparse
import contextlib
import resource
import sys
import tempfile
import time

import jax
import numpy as np

import bench_util
from mio_jax import config_base
from mio_jax import mesh as mesh_lib
from mio_jax.data import augment_recipe
from mio_jax.data import device_augment
from mio_jax.data import pipeline
from mio_jax.data import registry
from mio_jax.host_tf import tf
from mio_jax.host_tf import tfds


def _smooth_image(rng, height, width):
  """A natural-ish image: upsampled low-resolution noise plus grain."""
  low = rng.integers(0, 256, (height // 16, width // 16, 3))
  image = tf.image.resize(low.astype(np.float32), (height, width)).numpy()
  image += rng.normal(0, 8, image.shape)
  return np.clip(image, 0, 255).astype(np.uint8)


class SyntheticJpegs(tfds.core.GeneratorBasedBuilder):
  """ImageNet-like JPEG records; `jpegs` is set before building."""
  VERSION = tfds.core.Version("1.0.0")
  jpegs: list = []

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(encoding_format="jpeg"),
        "label": tfds.features.ClassLabel(num_classes=1000)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i, jpeg in enumerate(self.jpegs):
      yield i, {"image": jpeg, "label": i % 1000}


def jpeg_array_records(data_dir: str, count: int, rng) -> pipeline.EncodedSource:
  """`count` synthetic JPEGs as ArrayRecord files, read like imagenet1k."""
  SyntheticJpegs.jpegs = [
      tf.io.encode_jpeg(_smooth_image(rng, int(rng.integers(333, 501)),
                                      int(rng.integers(400, 501))),
                        quality=90).numpy() for _ in range(count)]
  builder = SyntheticJpegs(data_dir=data_dir, file_format="array_record")
  tfds.disable_progress_bar()
  with contextlib.redirect_stdout(sys.stderr):  # stdout: JSON lines only
    builder.download_and_prepare()
  records = tfds.data_source(
      "synthetic_jpegs", split="train", data_dir=data_dir, download=False,
      decoders={"image": tfds.decode.SkipDecoding()})
  return pipeline.EncodedSource(records)


def _config(size: int, dataset: str, batch_size: int, on_device: bool):
  config = config_base.base_config()
  config.dataset.name = dataset
  config.dataset.image_size = size
  config.batch_size = batch_size
  config.augment.on_device = on_device
  if size >= 64:
    config.augment.blur_prob = 0.5
    config.augment.solarize_prob = 0.2
  return config


def _cpu_seconds() -> float:
  """CPU time of this process so far, all threads (tf.data's included)."""
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def _rate(iterator, steps: int, warmup: int, batch_size: int) -> dict:
  """Wall images/s and images per CPU-second after `warmup` batches."""
  for _ in range(warmup):
    jax.block_until_ready(next(iterator))
  cpu_start = _cpu_seconds()
  start = time.perf_counter()
  for _ in range(steps):
    jax.block_until_ready(next(iterator))
  wall = time.perf_counter() - start
  cpu = _cpu_seconds() - cpu_start
  images = steps * batch_size
  return {"images_per_s": round(images / wall, 1),
          "views_per_s": round(2 * images / wall, 1),
          "images_per_cpu_s": round(images / cpu, 1)}


def _device_augment_rate(config, batch, steps: int) -> dict:
  """images/s of the jitted `augment_batch` on this machine's devices."""
  spec = registry.get_spec(config.dataset.name)
  params = augment_recipe.AugmentParams.from_config(config)
  fn = jax.jit(lambda b, step: device_augment.augment_batch(
      b, seed=0, step=step, params=params, mean=spec.mean, std=spec.std))
  jax.block_until_ready(fn(batch, 0))
  timing = bench_util.time_repeats(lambda: fn(batch, 1), repeats=steps)
  size = batch["index"].shape[0]
  return {"images_per_s": round(size / timing["wall_s"], 1),
          "images_per_cpu_s": round(size / timing["cpu_s"], 1)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--sizes", default="32,224")
  parser.add_argument("--modes", default="host_colour,on_device")
  parser.add_argument("--images", type=int, default=512,
                      help="distinct synthetic JPEGs at 224 px")
  parser.add_argument("--quick", action="store_true",
                      help="seconds: 2 steps of batch 16, 32 JPEGs")
  args = parser.parse_args()
  if args.quick:
    args.steps, args.warmup, args.images = 2, 1, 32
  rng = np.random.default_rng(0)
  mesh = mesh_lib.make_data_mesh()
  with tempfile.TemporaryDirectory() as data_dir:
    for size in (int(s) for s in args.sizes.split(",")):
      if size <= 64:
        images = rng.integers(0, 256, (50_000, size, size, 3), dtype=np.uint8)
        source = pipeline.ArraySource(images, rng.integers(0, 10, 50_000))
        dataset, data = "cifar10", "uint8 in memory"
      else:
        source = jpeg_array_records(data_dir, args.images, rng)
        dataset = "imagenet1k"
        data = f"{args.images} JPEGs 400-500 px, ArrayRecord, tfds.data_source"
      batch_size = 16 if args.quick else (256 if size <= 64 else 64)
      for mode in args.modes.split(","):
        config = _config(size, dataset, batch_size, mode == "on_device")
        spec = registry.get_spec(dataset)
        common = {"benchmark": "pretrain_input_pipeline", "mode": mode,
                  "image_size": size, "data": f"synthetic {data}",
                  "batch_size": batch_size, "devices": jax.device_count(),
                  "steps": args.steps}
        last = None
        for stage in ("host", "device"):
          # Built one at a time: tf.data starts prefetching at creation.
          rows = slice(0, batch_size)
          iterator = pipeline.pretrain_dataset(
              source, config, spec=spec, rows=rows).as_numpy_iterator()
          if stage == "device":
            iterator = pipeline.global_batches(iterator, mesh, batch_size,
                                               prefetch=2)
          rate = _rate(iterator, args.steps, args.warmup, batch_size)
          last = next(iterator)
          del iterator
          bench_util.emit({**common, "stage": stage, **rate})
        if mode == "on_device":
          bench_util.emit({**common, "stage": "device_augment",
                           **_device_augment_rate(config, last, args.steps)})


if __name__ == "__main__":
  main()
