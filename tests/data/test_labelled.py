"""Labelled crop+flip batches and the fine-tuning subsets (data/labelled.py)."""
import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.core.data_sources import base as data_sources_base

from mio_jax import config_base
from mio_jax import mesh as mesh_lib
from mio_jax.data import labelled
from mio_jax.data import pipeline
from mio_jax.data import registry


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
      crop_scale=(0.5, 1.0), batch_key="config.finetune.batch_size",
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
  # Labels are those of the subset's examples, crops differ between epochs.
  source = labelled.train_source(config)
  subset_labels = set(np.asarray(source.labels)[labelled_set.indices])
  assert set(batch["label"]) <= subset_labels
  assert not np.allclose(from_start[0]["image"], from_start[9]["image"])


@pytest.fixture
def mocked_imagenet(monkeypatch):
  """tfds.testing.mock_data for imagenet2012 and imagenet2012_subset."""
  import mio_jax.data  # pylint: disable=g-import-not-at-top
  for module in (registry, mio_jax.data):
    monkeypatch.setattr(module, "ensure_prepared", lambda config: None)
  # TFDS 4.9.10's mock data source only answers __getitem__.
  monkeypatch.setattr(
      data_sources_base.BaseDataSource, "__getitems__",
      lambda self, keys: [self[k] for k in keys])
  pipeline.load_source.cache_clear()
  with tfds.testing.mock_data(num_examples=24):
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
  assert len(labelled_set.indices) == 24  # every row of the mock subset
  batch = next(labelled.labelled_batches(
      config, mesh_lib.make_data_mesh(), labelled=labelled_set, batch_size=8,
      crop_scale=(0.08, 1.0), batch_key="config.finetune.batch_size"))
  assert batch["image"].shape == (8, 16, 16, 3)
  assert np.isfinite(np.asarray(batch["image"])).all()
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
  config.finetune.epochs = 1.0  # 3 steps of the 24 mock records
  config.eval.batch_size = 8
  config.eval.embedding_plot_points = 0
  results = experiment.train_and_evaluate(config, str(tmp_path))
  assert set(results) == {"finetune_top1", "finetune_top5"}
  subset = (tmp_path / "finetune" / "subset.json").read_text()
  assert "imagenet2012_subset/1pct" in subset
