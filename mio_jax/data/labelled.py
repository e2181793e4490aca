"""Labelled, augmented batches for the supervised protocols.

`labelled_batches` feeds augmented linear evaluation and fine-tuning: one
random resized crop (and, for mirror-symmetric data sets, a horizontal
flip) per example, no colour ops, normalised, with its integer label. As
in pretraining, which examples a step reads depends only on (seed, step)
(`indexing.labelled_step_examples`: the epochs' permutations read as one
stream, SimCLR's count of steps), and each crop is keyed by (seed, epoch,
example index). So a resumed run reads exactly the batches it would have
read, on 1 or 8 devices and with 1 or several processes.

`labelled_set` picks the examples: the whole train split, or the fixed
labelled subset of fine-tuning (`stratified_subset`: stratified and
deterministic in (seed, fraction or labels per class)). For ImageNet-1K
at 1% and 10% the subsets are SimCLR's published lists, read from TFDS's
`imagenet2012_subset/1pct` and `/10pct` builders (`imagenet_subset_source`).
"""
import dataclasses
import functools
from typing import Iterator, Optional

import jax
import ml_collections
import numpy as np

from mio_jax.data import augment
from mio_jax.data import dataset
from mio_jax.data import indexing
from mio_jax.data import pipeline
from mio_jax.data import preparation
from mio_jax.host_tf import tf
from mio_jax.host_tf import tfds

# Mixed into the subset seed so it is not the permutation or crop stream.
_SUBSET_STREAM = 0x1ABE1
# Labels read per chunk from an encoded source when drawing a subset.
_LABEL_CHUNK = 4096
# The crop's aspect-ratio range (Inception / SimCLR / torchvision default).
CROP_RATIO = (3 / 4, 4 / 3)
# ImageNet-1K label fractions SimCLR published subsets for, by TFDS config.
IMAGENET_SUBSETS = {0.01: "imagenet2012_subset/1pct",
                    0.1: "imagenet2012_subset/10pct"}


# ---- the labelled subset of fine-tuning --------------------------------------


def stratified_subset(labels: np.ndarray, *, seed: int,
                      fraction: Optional[float] = None,
                      per_class: Optional[int] = None) -> np.ndarray:
  """Sorted indices of a class-stratified sample of `labels`.

  Each class c with n_c examples keeps round(fraction * n_c) of them (at
  least 1), or min(per_class, n_c); which ones depends only on (seed,
  fraction or per_class). Exactly one of fraction / per_class is given.
  """
  if (fraction is None) == (per_class is None):
    raise ValueError("give exactly one of fraction and per_class")
  rng = np.random.default_rng(
      [seed, _SUBSET_STREAM, per_class or 0,
       int(round((fraction or 0) * 1e6))])
  chosen = []
  for label in np.unique(labels):
    members = np.flatnonzero(labels == label)
    keep = (min(per_class, len(members)) if per_class is not None else
            max(1, int(round(fraction * len(members)))))
    chosen.append(rng.choice(members, size=keep, replace=False))
  return np.sort(np.concatenate(chosen))


def source_labels(source) -> np.ndarray:
  """All labels (int64) of an ArraySource or EncodedSource.

  An EncodedSource's records are read as raw bytes and TF's example parser
  pulls out the "label" feature only: `source.get` would parse whole
  records into Python objects, JPEG bytes included (for labels_per_class on
  ImageNet-1K, the whole train split). ArrayRecord stores each example
  whole, so the bytes are still read from storage.
  """
  if not source.encoded:
    return np.asarray(source.labels, np.int64)
  raw = dataclasses.replace(
      source.records, decoders=None,
      deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
  label_only = {"label": raw.dataset_info.features.tf_example_spec["label"]}
  chunks = []
  for start in range(0, len(raw), _LABEL_CHUNK):
    keys = list(range(start, min(start + _LABEL_CHUNK, len(raw))))
    parsed = tf.io.parse_example(raw.__getitems__(keys), label_only)
    chunks.append(parsed["label"].numpy())
  return np.concatenate(chunks).astype(np.int64)


def imagenet_subset_name(config: ml_collections.ConfigDict,
                         *, fraction: Optional[float],
                         per_class: Optional[int]) -> Optional[str]:
  """The TFDS subset builder of this fine-tuning run, or None.

  ImageNet-1K at label_fraction 0.01 or 0.1 (and no labels_per_class) uses
  SimCLR's lists, so results compare with the papers that use them.
  """
  if config.dataset.name != "imagenet1k" or per_class:
    return None
  return IMAGENET_SUBSETS.get(fraction)


def imagenet_subset_source(name: str, data_dir: Optional[str]):
  """The train split of TFDS builder `name` (e.g. imagenet2012_subset/1pct).

  Its records are the subset's images (ArrayRecord, read by index).
  Raises DatasetNotPreparedError (no network, the command in the message)
  when the subset is not prepared in data_dir.
  """
  preparation.ensure_label_subset_prepared(name, data_dir)
  return pipeline.EncodedSource(tfds.data_source(
      name, split="train", data_dir=data_dir, download=False,
      decoders={"image": tfds.decode.SkipDecoding()}))


@dataclasses.dataclass(frozen=True)
class LabelledSet:
  """The examples a supervised protocol trains on.

  source: an ArraySource / EncodedSource; indices: int64 (n,) rows of it;
  description: what `<workdir>/finetune/subset.json` records.
  """
  source: object
  indices: np.ndarray
  description: dict


def train_source(config: ml_collections.ConfigDict,
                 split: Optional[str] = None):
  """The labelled train split of config's data set (as evaluation reads it),
  or the TFDS split expression `split`."""
  spec = dataset.dataset_spec(config)
  return pipeline.load_source(spec, split or spec.eval_splits["train"],
                              config.dataset.data_dir,
                              int(config.dataset.image_size))


def labelled_set(config: ml_collections.ConfigDict, *,
                 fraction: Optional[float] = None,
                 per_class: Optional[int] = None,
                 split: Optional[str] = None) -> LabelledSet:
  """The labelled training set: the whole train split, or a fixed subset.

  split: a TFDS split expression to read instead of the train split (the
  public MIO code's linear evaluation trains on "train[:80%]").
  fraction 1.0 (and no per_class) is the whole split; otherwise a
  stratified subset (`stratified_subset`, seed config.seed), or for
  ImageNet-1K at 1% / 10% SimCLR's published list (TFDS
  imagenet2012_subset). Raises DatasetNotPreparedError (with the command
  that prepares it) when the data set is missing.
  """
  preparation.ensure_prepared(config)
  whole = per_class is None and (fraction is None or fraction >= 1.0)
  subset_name = None if whole else imagenet_subset_name(
      config, fraction=fraction, per_class=per_class)
  if subset_name is not None:
    source = imagenet_subset_source(subset_name, config.dataset.data_dir)
    return LabelledSet(source, np.arange(len(source), dtype=np.int64),
                       {"tfds_subset": subset_name, "split": "train",
                        "num_examples": len(source),
                        "indices": "all rows of the TFDS subset builder"})
  source = train_source(config, split)
  if whole:
    indices = np.arange(len(source), dtype=np.int64)
  else:
    indices = stratified_subset(source_labels(source), seed=int(config.seed),
                                fraction=fraction, per_class=per_class)
  return LabelledSet(source, indices.astype(np.int64), {
      "dataset": config.dataset.name, "split": split or "train",
      "seed": int(config.seed), "label_fraction": fraction,
      "labels_per_class": per_class, "num_examples": int(len(indices)),
      "indices": indices.tolist()})


# ---- tf.data ----------------------------------------------------------------


def step_records(source, step: int, *, seed: int, indices: np.ndarray,
                 global_batch_size: int, rows: slice) -> tuple:
  """This process's (images, labels, example indices, epochs) of `step`."""
  batch, epochs = indexing.labelled_step_examples(
      int(step), seed=seed, examples=indices,
      global_batch_size=global_batch_size)
  batch = batch[rows]
  images, labels = source.get(batch)
  return (images, np.asarray(labels, np.int64), batch.astype(np.int64),
          epochs[rows].astype(np.int64))


def crop_flip_fn(*, seed: int, size: int, crop_scale: tuple[float, float],
                 hflip: bool, mean, std, encoded: bool):
  """record -> {"image": f32 (S, S, 3) normalised, "label": int32}.

  A random resized crop (area in crop_scale, aspect in CROP_RATIO) and,
  with hflip, a horizontal flip with probability 1/2; keyed by
  (seed, epoch, example index), so a step's crops are the same on resume.
  """

  def fn(image, label, index, epoch):
    key = augment.example_key(seed, epoch, index)
    crop_key, flip_key = tf.unstack(
        tf.random.experimental.stateless_split(key, 2))
    if encoded:
      image = tf.io.decode_image(image, channels=3, expand_animations=False)
    elif image.shape[-1] == 1:
      image = tf.image.grayscale_to_rgb(image)
    x = augment.random_resized_crop(image, crop_key, size=size,
                                    scale=crop_scale, ratio=CROP_RATIO)
    if hflip:
      x = augment.random_flip(x, flip_key)
    return {"image": augment.normalize(x, mean, std),
            "label": tf.cast(label, tf.int32)}

  return fn


def labelled_batches(config: ml_collections.ConfigDict,
                     mesh: jax.sharding.Mesh, *, labelled: LabelledSet,
                     batch_size: int, crop_scale: tuple[float, float],
                     hflip: bool, batch_key: str,
                     start_step: int = 0) -> Iterator[dict[str, jax.Array]]:
  """Endless augmented batches of `labelled` from step `start_step` on.

  Each: {"image": f32 (batch_size, S, S, 3) normalised, "label": int32
  (batch_size,)}, sharded over the mesh's `data` axis; S is
  config.dataset.image_size; with `hflip`, a random horizontal flip (the
  protocol's own setting, else config.augment.hflip: off for data sets that
  are not mirror-symmetric, e.g. digits).
  Raises indexing.BatchTooLargeError (naming config `batch_key`) when
  batch_size exceeds the examples.
  """
  indexing.check_batch(len(labelled.indices), batch_size, key=batch_key,
                       what="labelled training examples")
  spec = dataset.dataset_spec(config)
  source = labelled.source
  rows = indexing.local_rows(mesh, batch_size)
  read = functools.partial(step_records, source, seed=int(config.seed),
                           indices=labelled.indices,
                           global_batch_size=batch_size, rows=rows)
  example_fn = crop_flip_fn(
      seed=int(config.seed), size=int(config.dataset.image_size),
      crop_scale=tuple(float(s) for s in crop_scale),
      hflip=hflip, mean=spec.mean, std=spec.std,
      encoded=source.encoded)
  steps = tf.data.Dataset.range(start_step, np.iinfo(np.int64).max)
  ds = pipeline.local_batches(read, pipeline.record_spec(source), steps,
                              rows.stop - rows.start, example_fn)
  return pipeline.global_batches(tfds.as_numpy(ds), mesh, batch_size,
                                 int(config.dataset.prefetch))
