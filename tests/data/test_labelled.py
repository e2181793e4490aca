"""Labelled crop+flip batches and the fine-tuning subsets (data/labelled.py)."""
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from mio_jax import config_base
from mio_jax import errors
from mio_jax import mesh as mesh_lib
from mio_jax.data import dataset
from mio_jax.data import indexing
from mio_jax.data import labelled
from mio_jax.data import pipeline
from mio_jax.data import preparation


def _digits_config(tmp_path):
  config = config_base.base_config()
  config.dataset.data_dir = str(tmp_path)
  config.dataset.image_size = 8
  config.dataset.prefetch = 1
  config.augment.hflip = True
  return config


def test_stratified_subset_keeps_the_fraction_of_every_class():
  labels = np.repeat(np.arange(4), [100, 50, 20, 3])
  subset = labelled.stratified_subset(labels, seed=0, fraction=0.1)
  counts = np.bincount(labels[subset], minlength=4)
  np.testing.assert_array_equal(counts, [10, 5, 2, 1])  # at least one each
  assert np.all(np.diff(subset) > 0)  # sorted, no repeats
  again = labelled.stratified_subset(labels, seed=0, fraction=0.1)
  np.testing.assert_array_equal(subset, again)
  other = labelled.stratified_subset(labels, seed=1, fraction=0.1)
  assert not np.array_equal(subset, other)
  per_class = labelled.stratified_subset(labels, seed=0, per_class=4)
  np.testing.assert_array_equal(np.bincount(labels[per_class]), [4, 4, 4, 3])


def _batches(config, mesh, labelled_set, start_step, count):
  batches = labelled.labelled_batches(
      config, mesh, labelled=labelled_set, batch_size=16,
      crop_scale=(0.5, 1.0), hflip=True,
      batch_key="config.finetune.batch_size",
      start_step=start_step)
  return [{k: np.asarray(v) for k, v in next(batches).items()}
          for _ in range(count)]


def test_batches_depend_only_on_seed_and_step_on_any_device_count(tmp_path):
  config = _digits_config(tmp_path)
  labelled_set = labelled.labelled_set(config, fraction=0.1)
  # round(10% of each class's ~150 images): 149 of 1,500.
  assert 145 <= len(labelled_set.indices) <= 155
  eight = mesh_lib.make_data_mesh()
  one = mesh_lib.make_data_mesh(eight.devices.flat[:1])
  from_start = _batches(config, eight, labelled_set, 0, 12)
  resumed = _batches(config, one, labelled_set, 10, 2)
  for a, b in zip(from_start[10:], resumed):
    np.testing.assert_array_equal(a["label"], b["label"])
    np.testing.assert_allclose(a["image"], b["image"], atol=1e-6)
  batch = from_start[0]
  assert batch["image"].shape == (16, 8, 8, 3)
  assert batch["image"].dtype == np.float32 and batch["label"].dtype == np.int32
  # Each image is the crop of the example whose label it carries: the
  # step's examples, cropped as keyed by (seed, epoch, index).
  source = labelled.train_source(config)
  indices, epochs = indexing.labelled_step_examples(
      0, seed=int(config.seed), examples=labelled_set.indices,
      global_batch_size=16)
  assert set(indices) <= set(labelled_set.indices)
  np.testing.assert_array_equal(batch["label"], source.labels[indices])
  spec = dataset.dataset_spec(config)
  crop = labelled.crop_flip_fn(
      seed=int(config.seed), size=8, crop_scale=(0.5, 1.0), hflip=True,
      mean=spec.mean, std=spec.std, encoded=False)
  for image, index, epoch in zip(batch["image"], indices, epochs):
    expected = crop(tf.constant(source.images[index]),
                    tf.constant(source.labels[index]), tf.constant(index),
                    tf.constant(epoch, tf.int64))["image"]
    np.testing.assert_allclose(image, expected, atol=1e-5)
  assert not np.allclose(from_start[0]["image"], from_start[9]["image"])


def _prepare_digits_as_array_record(data_dir):
  """Digits in ArrayRecord files: an encoded source read by index."""
  tfds.builder("digits", data_dir=str(data_dir),
               file_format="array_record").download_and_prepare()
  return tfds.data_source("digits", split="test", data_dir=str(data_dir),
                          decoders={"image": tfds.decode.SkipDecoding()})


def test_labels_of_an_encoded_source_are_read_without_the_images(
    tmp_path, monkeypatch):
  records = _prepare_digits_as_array_record(tmp_path)
  expected = [records[i]["label"] for i in range(len(records))]
  monkeypatch.setattr(labelled, "_LABEL_CHUNK", 100)  # 297 rows: 3 chunks

  def whole_record(*args, **kwargs):
    raise AssertionError("a whole record (its image too) was parsed")

  # TFDS parses a whole record (JPEG bytes included) here.
  monkeypatch.setattr(tfds.features.FeaturesDict, "deserialize_example_np",
                      whole_record)
  labels = labelled.source_labels(pipeline.EncodedSource(records))
  assert labels.dtype == np.int64
  np.testing.assert_array_equal(labels, expected)


@pytest.mark.parametrize("subset", ["1pct", "10pct"])
def test_an_unprepared_imagenet_1k_subset_names_its_prepare_command(
    tmp_path, subset):
  start = time.monotonic()
  with pytest.raises(preparation.DatasetNotPreparedError) as error:
    labelled.imagenet_subset_source(f"imagenet2012_subset/{subset}",
                                    str(tmp_path))
  assert time.monotonic() - start < 5.0  # no network
  message = str(error.value)
  assert (f"python -m mio_jax.cli.prepare --dataset=imagenet1k_subset_{subset}"
          f" --data_dir={tmp_path} --manual_dir=") in message
  assert "ILSVRC2012_img_train.tar" in message
  assert isinstance(error.value, errors.UserError)


# Rows of the mock data sources: the subsets differ from imagenet2012 and
# from each other in length and labels, so a test sees which one was read.
_MOCK_ROWS = {"imagenet2012": (24, 500), "imagenet2012_subset/1pct": (16, 0),
              "imagenet2012_subset/10pct": (20, 100)}
_MOCK_LABELS_PER_SOURCE = 4


class _MockRecords(list):
  """A data source: records by index, several at once."""

  def __getitems__(self, keys):
    return [self[k] for k in keys]


def _mock_data_source(builder, split, decoders=None, **kwargs):
  del split, decoders, kwargs
  name = builder.name
  if builder.builder_config:
    name += "/" + builder.builder_config.name
  rows, first_label = _MOCK_ROWS[name]
  jpeg = tf.io.encode_jpeg(tf.fill([20, 24, 3], tf.constant(90, tf.uint8)))
  return _MockRecords(
      {"image": jpeg.numpy(),
       "label": first_label + i % _MOCK_LABELS_PER_SOURCE}
      for i in range(rows))


@pytest.fixture
def mocked_imagenet(monkeypatch):
  """tfds.testing.mock_data for imagenet2012 and imagenet2012_subset."""
  import mio_jax.data  # pylint: disable=g-import-not-at-top
  for module in (preparation, mio_jax.data):
    monkeypatch.setattr(module, "ensure_prepared", lambda config: None)
  monkeypatch.setattr(preparation, "ensure_label_subset_prepared",
                      lambda name, data_dir: None)
  pipeline.load_source.cache_clear()
  with tfds.testing.mock_data(as_data_source_fn=_mock_data_source):
    yield
  pipeline.load_source.cache_clear()


@pytest.mark.parametrize("fraction,builder", [
    (0.01, "imagenet2012_subset/1pct"), (0.1, "imagenet2012_subset/10pct")])
def test_imagenet_1k_subsets_are_simclrs_tfds_lists(mocked_imagenet, fraction,
                                                     builder):
  del mocked_imagenet
  config = config_base.load_config_file("configs/imagenet1k.py")
  config.dataset.image_size = 16
  config.dataset.prefetch = 1
  labelled_set = labelled.labelled_set(config, fraction=fraction)
  assert labelled_set.description["tfds_subset"] == builder
  rows, first_label = _MOCK_ROWS[builder]
  assert len(labelled_set.indices) == rows  # every row of the mock subset
  batch = next(labelled.labelled_batches(
      config, mesh_lib.make_data_mesh(), labelled=labelled_set, batch_size=8,
      crop_scale=(0.08, 1.0), hflip=True,
      batch_key="config.finetune.batch_size"))
  assert batch["image"].shape == (8, 16, 16, 3)
  assert np.isfinite(np.asarray(batch["image"])).all()
  assert set(np.asarray(batch["label"])) <= set(
      range(first_label, first_label + _MOCK_LABELS_PER_SOURCE))
  # Other fractions, or labels per class, draw a stratified subset instead.
  assert labelled.imagenet_subset_name(config, fraction=0.05,
                                       per_class=None) is None
  assert labelled.imagenet_subset_name(config, fraction=0.01,
                                       per_class=13) is None


@pytest.mark.slow
def test_finetune_on_the_imagenet_1k_1pct_subset_end_to_end(mocked_imagenet,
                                                             tmp_path):
  """--mode=finetune on mock ImageNet-1K: SimCLR's 1% list, top-1/top-5."""
  del mocked_imagenet
  from mio_jax import experiment  # pylint: disable=g-import-not-at-top
  config = config_base.load_config_file("configs/imagenet1k.py")
  config.mode = "finetune"
  config.dataset.image_size = 16
  config.dataset.prefetch = 1
  config.model.name = "resnet_tiny"
  config.model.width_multiplier = 0.25
  config.finetune.label_fraction = 0.01
  config.finetune.batch_size = 8
  config.finetune.epochs = 1.0  # 2 steps of the 16 rows of the mock 1% list
  config.eval.batch_size = 8
  config.eval.embedding_plot_points = 0
  results = experiment.train_and_evaluate(config, str(tmp_path))
  assert set(results) == {"finetune_top1", "finetune_top5"}
  subset = (tmp_path / "finetune" / "subset.json").read_text()
  assert "imagenet2012_subset/1pct" in subset
