"""Deterministic tf.data input pipelines feeding global, sharded jax.Arrays.

Which examples a step sees depends only on (seed, step) (`indexing`), and
each process reads only its contiguous slice of the global batch, the rows
its devices hold. Every host augmentation draw is keyed by (seed, epoch,
example index, view); with `config.augment.on_device` the colour ops run
in the train step, keyed by (seed, step, example index, view)
(`mio_jax.data.device_augment`).

The global batch of a step is therefore identical on restart (the iterator
starts at `start_step` without touching earlier steps), on 1 or 8 devices
and with 1 or 2 processes.

Reading by index needs random access. Small datasets are decoded once into
a uint8 array in host RAM (`ArraySource`); ImageNet-scale ones are read as
encoded JPEG bytes from ArrayRecord files with `tfds.data_source`
(`EncodedSource`) and decoded per step. The trade-off: the whole split is
shuffled exactly every epoch and any step can be reproduced alone, at the
price of ArrayRecord files (TFDS 4.9.10 still writes TFRecord by default,
which has no random access; `python -m mio_jax.cli.prepare` writes
ArrayRecord) and of per-record reads instead of large sequential ones.

A batch is read by a function of its number (`pretrain_step_records`,
`eval_batch_records`) that tf.data calls for several batches at once, so
no single Python thread sits on the record path. A JPEG is decoded only
inside the crop windows of its two views (`augment.decode_windows`).
"""
import collections
import dataclasses
import functools
from typing import Any, Callable, Iterator, Optional

import jax
import ml_collections
import numpy as np

from mio_jax import mesh as mesh_lib
from mio_jax.data import augment
from mio_jax.data import augment_recipe
from mio_jax.data import dataset
from mio_jax.data import indexing
from mio_jax.data import preparation
from mio_jax.data import registry
from mio_jax.host_tf import tf
from mio_jax.host_tf import tfds

# Examples per chunk when decoding a split into memory.
_LOAD_CHUNK = 4096


# ---- example sources (random access by index) -------------------------------


@dataclasses.dataclass(frozen=True)
class ArraySource:
  """A split decoded into memory: uint8 images (N, H, W, C), int labels (N,)."""
  images: np.ndarray
  labels: np.ndarray

  encoded = False

  def __len__(self) -> int:
    return len(self.labels)

  def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return self.images[indices], self.labels[indices]

  @property
  def image_spec(self) -> tf.TensorSpec:
    return tf.TensorSpec((None,) + self.images.shape[1:], tf.uint8)


@dataclasses.dataclass(frozen=True)
class EncodedSource:
  """Records {"image": encoded bytes, "label": int} read by index.

  `records` is a TFDS data source (anything with `__len__` and
  `__getitems__(list of indices) -> list of records`).
  """
  records: Any

  encoded = True

  def __len__(self) -> int:
    return len(self.records)

  def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # TFDS data sources read a list of keys with parallel ArrayRecord reads.
    records = self.records.__getitems__(indices.tolist())
    images = np.array([r["image"] for r in records], dtype=object)
    labels = np.array([r["label"] for r in records], dtype=np.int64)
    return images, labels

  @property
  def image_spec(self) -> tf.TensorSpec:
    return tf.TensorSpec((None,), tf.string)


def _resize_uint8(images: np.ndarray, size: int) -> np.ndarray:
  resized = tf.image.resize(images, (size, size), method="bilinear",
                            antialias=True)
  return np.asarray(tf.cast(tf.clip_by_value(tf.round(resized), 0, 255),
                            tf.uint8))


@functools.lru_cache(maxsize=4)
def load_source(spec: registry.DatasetSpec, split: str,
                data_dir: Optional[str], image_size: int):
  """An ArraySource or EncodedSource for a TFDS split of the dataset `spec`.

  Cached: the evaluators ask for the same splits again and again. Call
  `load_source.cache_clear()` after the data changes (tests).
  """
  if spec.storage == "random_access":
    records = tfds.data_source(
        spec.tfds_name, split=split, data_dir=data_dir, download=False,
        decoders={"image": tfds.decode.SkipDecoding()})
    return EncodedSource(records)
  # Chunked rather than batch_size=-1, which aborts under mock_data.
  ds = tfds.load(spec.tfds_name, split=split, data_dir=data_dir,
                 download=False)
  ds = ds.map(lambda x: (x["image"], x["label"])).batch(_LOAD_CHUNK)
  chunks = list(tfds.as_numpy(ds))
  images = np.concatenate([c[0] for c in chunks]).astype(np.uint8)
  labels = np.concatenate([c[1] for c in chunks]).astype(np.int64)
  if spec.resize_on_load:
    images = _resize_uint8(images, image_size)
  return ArraySource(images, labels)


def _source(spec: registry.DatasetSpec, config: ml_collections.ConfigDict,
            split: str):
  return load_source(spec, split, config.dataset.data_dir,
                     int(config.dataset.image_size))


def pretrain_steps_per_epoch(config: ml_collections.ConfigDict) -> int:
  """Steps per epoch of `config`'s pretraining split at its global batch.

  Raises indexing.BatchTooLargeError when config.batch_size exceeds it.
  """
  return indexing.steps_per_epoch(
      dataset.dataset_info(config).num_pretrain_examples, config.batch_size)


# ---- tf.data stages ----------------------------------------------------------


def _decoded_rgb(image: tf.Tensor, encoded: bool) -> tf.Tensor:
  """uint8 HWC with 3 channels from a source element."""
  if encoded:
    image = tf.io.decode_image(image, channels=3, expand_animations=False)
  if image.shape[-1] == 1:
    image = tf.image.grayscale_to_rgb(image)
  return image


def local_batches(read: Callable[[int], tuple], record_spec: tuple,
                   batches: tf.data.Dataset, local_batch: int,
                   example_fn) -> tf.data.Dataset:
  """tf.data over `read(b)` for each batch number b of `batches`.

  `read` returns the records of one batch (numpy arrays, `record_spec`).
  It runs in tf.data's parallel map, several batches at once: the record
  reads (ArrayRecord, in C++) overlap instead of queueing behind one
  Python generator. Then unbatch, `example_fn` in parallel, rebatch; the
  order stays that of `batches` (deterministic).
  """
  dtypes = [spec.dtype for spec in record_spec]

  def read_batch(batch):
    records = tf.numpy_function(read, [batch], dtypes, stateful=False)
    return tuple(tf.ensure_shape(r, spec.shape)
                 for r, spec in zip(records, record_spec))

  ds = batches.map(read_batch, num_parallel_calls=tf.data.AUTOTUNE,
                   deterministic=True)
  ds = ds.unbatch()
  ds = ds.map(example_fn, num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=True)
  ds = ds.batch(local_batch, drop_remainder=True)
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def record_spec(source) -> tuple:
  """Specs of one batch's records: images, then three int64 columns."""
  return (source.image_spec,) + (tf.TensorSpec((None,), tf.int64),) * 3


def global_batches(local_batches: Iterator[dict[str, np.ndarray]],
                   mesh: jax.sharding.Mesh, global_batch_size: int,
                   prefetch: int) -> Iterator[dict[str, jax.Array]]:
  """Local numpy batches -> global arrays, `prefetch` transfers in flight."""
  sharding = mesh_lib.batch_sharding(mesh)

  def to_global(batch):
    return {
        k: jax.make_array_from_process_local_data(
            sharding, v, (global_batch_size,) + v.shape[1:])
        for k, v in batch.items()
    }

  queue = collections.deque()
  for batch in local_batches:
    queue.append(to_global(batch))
    if len(queue) > prefetch:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


# ---- pretraining -----------------------------------------------------------


def pretrain_step_records(source, step: int, *, seed: int,
                          global_batch_size: int, rows: slice) -> tuple:
  """This process's (images, labels, example indices, epochs) of `step`."""
  indices, epoch = indexing.pretrain_step_examples(
      int(step), seed=seed, num_examples=len(source),
      global_batch_size=global_batch_size)
  indices = indices[rows]
  images, labels = source.get(indices)
  return images, labels, indices.astype(np.int64), np.full_like(
      indices, epoch, dtype=np.int64)


def two_view_fn(params: augment_recipe.AugmentParams, *, seed: int, mean, std,
                encoded: bool):
  """The per-example map: record -> {"view1", "view2", "label", "index"}.

  Views are float32 normalised, or with `params.on_device` uint8 before
  the colour ops (`device_augment.augment_batch` finishes them). "index"
  (int32) is the example's index in the split, which keys the device ops.
  A JPEG is decoded once, inside the two crop windows only.
  """

  def fn(image, label, index, epoch):
    key = augment.example_key(seed, epoch, index)
    seeds = [augment.view_key(key, view) for view in (1, 2)]
    if encoded:
      shape = augment.encoded_image_shape(image)
    else:
      image = _decoded_rgb(image, encoded=False)
      shape = tf.shape(image)
    windows = [augment.view_crop_window(shape, s, params) for s in seeds]
    if encoded:
      crops = augment.decode_windows(image, windows)
    else:
      crops = [tf.slice(image, begin, size) for begin, size in windows]
    views = {}
    for view, (crop, view_seed) in enumerate(zip(crops, seeds), start=1):
      x = augment.finish_view(crop, view_seed, params)
      views[f"view{view}"] = x if params.on_device else augment.normalize(
          x, mean, std)
    return {**views, "label": tf.cast(label, tf.int32),
            "index": tf.cast(index, tf.int32)}

  return fn


def pretrain_dataset(source, config: ml_collections.ConfigDict, *,
                     spec: registry.DatasetSpec, rows: slice,
                     start_step: int = 0) -> tf.data.Dataset:
  """This process's share of the pretraining batches, as numpy-ready tf.data.

  spec: `dataset.dataset_spec(config)` (its normalisation).
  """
  read = functools.partial(
      pretrain_step_records, source, seed=int(config.seed),
      global_batch_size=int(config.batch_size), rows=rows)
  example_fn = two_view_fn(augment_recipe.AugmentParams.from_config(config),
                           seed=int(config.seed), mean=spec.mean, std=spec.std,
                           encoded=source.encoded)
  steps = tf.data.Dataset.range(start_step, np.iinfo(np.int64).max)
  return local_batches(read, record_spec(source),
                        steps, rows.stop - rows.start, example_fn)


def pretrain_batches(config: ml_collections.ConfigDict,
                     mesh: jax.sharding.Mesh, *,
                     start_step: int = 0) -> Iterator[dict[str, jax.Array]]:
  """Endless pretraining batches from step `start_step` on.

  Each: {"view1", "view2": f32 (batch_size, S, S, 3) normalised,
  "label": int32 (batch_size,), "index": int32 (batch_size,) the examples'
  indices in the split}, sharded over the mesh's `data` axis. With
  `config.augment.on_device` the views are uint8 (S, S, 3), cropped and
  flipped only: pass the batch through `device_augment.augment_batch`
  (with this step's number) inside the train step.
  """
  preparation.ensure_prepared(config)
  spec = dataset.dataset_spec(config)
  source = _source(spec, config, spec.pretrain_split)
  rows = indexing.local_rows(mesh, int(config.batch_size))
  ds = pretrain_dataset(source, config, spec=spec, rows=rows,
                        start_step=start_step)
  return global_batches(tfds.as_numpy(ds), mesh, int(config.batch_size),
                         int(config.dataset.prefetch))


# ---- evaluation --------------------------------------------------------------


def eval_batch_records(source, batch: int, *, global_batch_size: int,
                       rows: slice) -> tuple:
  """This process's (images, labels, masks, indices) of eval batch `batch`."""
  indices, mask = indexing.eval_batch_examples(int(batch), num_examples=len(source),
                                     global_batch_size=global_batch_size)
  indices, mask = indices[rows], mask[rows]
  images, labels = source.get(indices)
  return (images, np.where(mask, labels, -1).astype(np.int64),
          mask.astype(np.int64), indices.astype(np.int64))


def eval_dataset(source, config: ml_collections.ConfigDict, *,
                 spec: registry.DatasetSpec, rows: slice) -> tf.data.Dataset:
  size = int(config.dataset.image_size)
  global_batch_size = int(config.eval.batch_size)

  def example_fn(image, label, mask, index):
    del index  # Only carried for debugging symmetry with pretraining.
    image = _decoded_rgb(image, source.encoded)
    image = augment.eval_resize_crop(image, size=size,
                                     crop_fraction=spec.eval_crop_fraction)
    return {"image": augment.normalize(image, spec.mean, spec.std),
            "label": tf.cast(label, tf.int32), "mask": tf.cast(mask, tf.bool)}

  read = functools.partial(eval_batch_records, source,
                           global_batch_size=global_batch_size, rows=rows)
  batches = tf.data.Dataset.range(
      indexing.num_eval_batches(len(source), global_batch_size))
  return local_batches(read, record_spec(source),
                        batches, rows.stop - rows.start, example_fn)


def eval_batches(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                 split: str) -> Iterator[dict[str, jax.Array]]:
  """One pass over the "train" or "test" split, every example exactly once.

  Each: {"image": f32 (B, S, S, 3), "label": int32 (-1 on padding),
  "mask": bool}, B = config.eval.batch_size; the last batch is padded with
  mask False.
  """
  spec = dataset.dataset_spec(config)
  if split not in spec.eval_splits:
    raise ValueError(f"Unknown eval split {split!r}; valid: "
                     f"{', '.join(spec.eval_splits)}.")
  return split_passes(config, mesh, spec.eval_splits[split])()


def split_passes(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                 tfds_split: str) -> Callable[[], Iterator[dict[str, jax.Array]]]:
  """A function whose every call is one pass over a TFDS split expression
  (e.g. "train[80%:]"), batched as `eval_batches`.

  The data are checked, read (and an image folder listed) once, here: early
  stopping validates once per epoch.
  """
  preparation.ensure_prepared(config)
  spec = dataset.dataset_spec(config)
  source = _source(spec, config, tfds_split)
  rows = indexing.local_rows(mesh, int(config.eval.batch_size))

  def one_pass():
    ds = eval_dataset(source, config, spec=spec, rows=rows)
    return global_batches(tfds.as_numpy(ds), mesh,
                          int(config.eval.batch_size),
                          int(config.dataset.prefetch))

  return one_pass

