"""Dataset registry, builders and every dataset's pipeline on mock data."""
import io
import tarfile
import time
import zipfile

from etils import epath

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core.data_sources import base as data_sources_base

import mio_jax.data as data
from mio_jax import config_base
from mio_jax import errors
from mio_jax import mesh as mesh_lib
from mio_jax.data import builders
from mio_jax.data import pipeline
from mio_jax.data import preparation
from mio_jax.data import registry

_MOCK_EXAMPLES = 20


def _config(name, data_dir=None):
  config = config_base.base_config()
  config.dataset.name = name
  config.dataset.data_dir = data_dir
  config.dataset.image_size = 16
  config.dataset.prefetch = 1
  config.batch_size = 8
  config.eval.batch_size = 8
  config.augment.blur_prob = 0.5
  config.augment.solarize_prob = 0.2
  return config


@pytest.fixture
def mocked_tfds(monkeypatch):
  """tfds.testing.mock_data; its fake data has no prepared files to find."""
  monkeypatch.setattr(preparation, "ensure_prepared", lambda config: None)
  # TFDS 4.9.10's mock data source only answers __getitem__ (its
  # __getitems__ is set on a MagicMock, which does not bind self): read the
  # mock records one by one. Real sources are tested in the imagenet100 test.
  monkeypatch.setattr(
      data_sources_base.BaseDataSource, "__getitems__",
      lambda self, keys: [self[k] for k in keys])
  pipeline.load_source.cache_clear()
  with tfds.testing.mock_data(num_examples=_MOCK_EXAMPLES):
    yield
  pipeline.load_source.cache_clear()


@pytest.mark.parametrize("name", sorted(registry.DATASETS))
def test_every_dataset_pipeline_on_mock_data(name, mocked_tfds):
  del mocked_tfds
  config = _config(name)
  mesh = mesh_lib.make_data_mesh()
  batch = next(data.pretrain_batches(config, mesh))
  assert batch["view1"].shape == batch["view2"].shape == (8, 16, 16, 3)
  assert np.isfinite(np.asarray(batch["view1"])).all()
  masks = [np.asarray(b["mask"]) for b in data.eval_batches(config, mesh,
                                                            "test")]
  assert sum(m.sum() for m in masks) == _MOCK_EXAMPLES
  info = data.dataset_info(config)  # mock info has no splits: table sizes
  assert info.num_pretrain_examples == sum(
      registry.get_spec(name).split_sizes[s]
      for s in registry.get_spec(name).pretrain_split.split("+"))
  assert info.num_classes == registry.get_spec(name).num_classes


def test_unknown_dataset_lists_valid_names():
  with pytest.raises(ValueError, match="cifar10, cifar100, digits"):
    data.dataset_info(_config("mnist"))


@pytest.mark.parametrize("name", ["cifar10", "tiny_imagenet", "imagenet100"])
def test_unprepared_dataset_fails_fast_with_commands(name, tmp_path):
  start = time.monotonic()
  with pytest.raises(data.DatasetNotPreparedError) as error:
    data.ensure_prepared(_config(name, str(tmp_path)))
  assert time.monotonic() - start < 5.0
  message = str(error.value)
  assert f"python -m mio_jax.cli.prepare --dataset={name}" in message
  assert f"--data_dir={tmp_path}" in message
  assert isinstance(error.value, errors.UserError)  # one line, exit status 2
  with pytest.raises(data.DatasetNotPreparedError):
    next(data.pretrain_batches(_config(name, str(tmp_path)),
                               mesh_lib.make_data_mesh()))


def test_digits_builder_offline(tmp_path):
  builder = data.prepare_digits(str(tmp_path))
  assert (builder.data_path / "dataset_info.json").exists()
  splits = {k: v.num_examples for k, v in builder.info.splits.items()}
  assert splits == {"train": 1500, "test": 297}
  ids = {}
  for split in ("train", "test"):
    ds = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    assert ds["image"].shape[1:] == (8, 8, 1)
    assert ds["image"].dtype == np.uint8 and ds["image"].max() == 255
    assert set(ds["label"]) == set(range(10))  # stratified: every class
    ids[split] = set(ds["id"])
  assert not ids["train"] & ids["test"]
  assert len(ids["train"] | ids["test"]) == 1797
  # Already prepared: ensure_prepared is a no-op and dataset_info reads it.
  config = _config("digits", str(tmp_path))
  data.ensure_prepared(config)
  assert data.dataset_info(config).num_pretrain_examples == 1500


def test_digits_auto_prepares(tmp_path):
  config = _config("digits", str(tmp_path))
  data.ensure_prepared(config)
  assert (tmp_path / "digits" / "1.0.0" / "dataset_info.json").exists()


def _jpeg(value, gray=False):
  image = tf.fill([64, 64, 1 if gray else 3], tf.constant(value, tf.uint8))
  return tf.io.encode_jpeg(image).numpy()


def test_tiny_imagenet_builder_from_fake_archive(tmp_path, monkeypatch):
  wnids = [f"n{i:08d}" for i in range(builders.tiny_imagenet.NUM_CLASSES)]
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w") as zf:
    root = "tiny-imagenet-200"
    zf.writestr(f"{root}/wnids.txt", "\n".join(reversed(wnids)) + "\n")
    for wnid in wnids[:2]:
      for k in range(2):
        zf.writestr(f"{root}/train/{wnid}/images/{wnid}_{k}.JPEG",
                    _jpeg(10 * k, gray=k == 1))
    zf.writestr(f"{root}/val/images/val_0.JPEG", _jpeg(50))
    zf.writestr(f"{root}/val/images/val_1.JPEG", _jpeg(60))
    zf.writestr(f"{root}/val/val_annotations.txt",
                f"val_0.JPEG\t{wnids[1]}\t0\t0\t10\t10\n"
                f"val_1.JPEG\t{wnids[0]}\t0\t0\t10\t10\n")
  manual = tmp_path / "manual"
  manual.mkdir()
  (manual / "tiny-imagenet-200.zip").write_bytes(buffer.getvalue())
  builder = data.prepare_dataset("tiny_imagenet", data_dir=str(tmp_path),
                                 manual_dir=str(manual))
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
      "train": 4, "validation": 2}
  val = tfds.as_numpy(builder.as_dataset(split="validation", batch_size=-1))
  labels = dict(zip(val["file_name"], val["label"]))
  assert labels == {b"val_0.JPEG": 1, b"val_1.JPEG": 0}
  train = tfds.as_numpy(builder.as_dataset(split="train", batch_size=-1))
  assert train["image"].shape == (4, 64, 64, 3)  # grayscale JPEG -> RGB
  # The real pipeline reads it (a prepared dataset, no mocks).
  pipeline.load_source.cache_clear()
  config = _config("tiny_imagenet", str(tmp_path))
  config.batch_size = config.eval.batch_size = 8
  masks = [np.asarray(b["mask"]) for b in data.eval_batches(
      config, mesh_lib.make_data_mesh(), "test")]
  assert sum(m.sum() for m in masks) == 2
  pipeline.load_source.cache_clear()


def test_tiny_imagenet_needs_its_archive(tmp_path):
  with pytest.raises(data.DatasetNotPreparedError,
                     match="tiny-imagenet-200.zip"):
    data.prepare_dataset("tiny_imagenet", data_dir=str(tmp_path),
                         manual_dir=str(tmp_path))


def test_imagenet100_class_list():
  ids = builders.imagenet100_class_ids()
  assert len(ids) == len(set(ids)) == 100
  assert ids[:3] == ("n02869837", "n01749939", "n02488291")
  assert ids[-1] == "n02090622"
  imagenet_ids = set(tfds.builder("imagenet2012").info.features[
      "label"].names)
  assert set(ids) <= imagenet_ids
  assert tfds.builder("imagenet100").info.features["label"].num_classes == 100


def test_prepared_identity_is_tfds_name_version_and_split_sizes(tmp_path):
  builder = data.prepare_digits(str(tmp_path))
  assert data.prepared_identity(_config("digits", str(tmp_path))) == (
      f"digits@{builder.info.version} (test 297, train 1500)")


def test_random_access_dataset_in_tfrecord_format_is_rejected(
    tmp_path, monkeypatch):
  """ImageNet-scale sets are read by index: TFRecord files are refused."""
  # Stand in a prepared TFRecord dataset (digits) for imagenet1k's files.
  data.prepare_digits(str(tmp_path))
  spec = registry.get_spec("imagenet1k")
  monkeypatch.setitem(registry.DATASETS, "imagenet1k", registry.DatasetSpec(
      **{**spec.__dict__, "tfds_name": "digits"}))
  with pytest.raises(data.DatasetNotPreparedError, match="array_record"):
    data.ensure_prepared(_config("imagenet1k", str(tmp_path)))


def _tar_bytes(members: dict[str, bytes]) -> bytes:
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode="w") as tar:
    for name, payload in members.items():
      info = tarfile.TarInfo(name)
      info.size = len(payload)
      tar.addfile(info, io.BytesIO(payload))
  return buffer.getvalue()


def test_imagenet100_builder_filters_fake_imagenet_archives(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  kept, dropped = "n02869837", "n01440764"  # in / not in ImageNet-100
  (manual / "ILSVRC2012_img_train.tar").write_bytes(_tar_bytes({
      f"{kept}.tar": _tar_bytes({f"{kept}_{k}.JPEG": _jpeg(k) for k in (1, 2)}),
      f"{dropped}.tar": _tar_bytes({f"{dropped}_1.JPEG": b"never read"}),
  }))
  # TFDS labels validation files by sorted name from its own label list.
  num_val = 40
  (manual / "ILSVRC2012_img_val.tar").write_bytes(_tar_bytes({
      f"ILSVRC2012_val_{i:08d}.JPEG": _jpeg(i) for i in range(1, num_val + 1)}))
  val_labels = tfds.core.tfds_path(
      "datasets/imagenet2012/validation_labels.txt").read_text().split()
  expected_val = [w for w in val_labels[:num_val]
                  if w in builders.imagenet100_class_ids()]
  assert 0 < len(expected_val) < num_val
  builder = data.prepare_dataset("imagenet100", data_dir=str(tmp_path),
                                 manual_dir=str(manual))
  assert builder.info.file_format.value == "array_record"
  names = builder.info.features["label"].names
  records = tfds.data_source("imagenet100", split="validation",
                             data_dir=str(tmp_path))
  assert sorted(names[records[i]["label"]] for i in range(len(records))) == (
      sorted(expected_val))
  train = tfds.data_source("imagenet100", split="train",
                           data_dir=str(tmp_path))
  assert len(train) == 2
  assert {names[train[i]["label"]] for i in range(2)} == {kept}
  # The random-access pipeline reads the prepared ArrayRecord files.
  pipeline.load_source.cache_clear()
  config = _config("imagenet100", str(tmp_path))
  config.batch_size = 8
  masks = [np.asarray(b["mask"]) for b in data.eval_batches(
      config, mesh_lib.make_data_mesh(), "train")]
  assert sum(m.sum() for m in masks) == 2
  pipeline.load_source.cache_clear()


def test_imagenet_1k_subset_is_prepared_from_the_imagenet_archives(
    tmp_path, monkeypatch):
  """SimCLR's 1% list, from fake archives: only the listed images, as
  ArrayRecord, read by the fine-tuning source."""
  manual = tmp_path / "manual"
  manual.mkdir()
  wnids = ("n01440764", "n02869837")
  (manual / "ILSVRC2012_img_train.tar").write_bytes(_tar_bytes({
      f"{wnid}.tar": _tar_bytes({f"{wnid}_{k}.JPEG": _jpeg(k) for k in range(3)})
      for wnid in wnids}))
  (manual / "ILSVRC2012_img_val.tar").write_bytes(_tar_bytes({
      f"ILSVRC2012_val_{i:08d}.JPEG": _jpeg(i) for i in range(1, 3)}))
  listed = [f"{wnids[0]}_1.JPEG", f"{wnids[1]}_0.JPEG", f"{wnids[1]}_2.JPEG"]
  subset_list = tmp_path / "1percent.txt"
  subset_list.write_text("\n".join(listed) + "\n")

  def download(self, url):
    # The one download: SimCLR's list of the subset's images (no network).
    del self
    assert url.endswith("/imagenet_subsets/1percent.txt")
    return str(subset_list)

  monkeypatch.setattr(tfds.download.DownloadManager, "download", download)
  builder = data.prepare_dataset("imagenet1k_subset_1pct",
                                 data_dir=str(tmp_path),
                                 manual_dir=str(manual))
  assert builder.info.file_format.value == "array_record"
  assert builder.info.splits["train"].num_examples == 3
  names = builder.info.features["label"].names
  records = tfds.data_source("imagenet2012_subset/1pct", split="train",
                             data_dir=str(tmp_path))
  assert sorted((r["file_name"].decode(), names[r["label"]])
                for r in records) == (
      sorted((name, name.split("_")[0]) for name in listed))

  from mio_jax.data import labelled  # pylint: disable=g-import-not-at-top
  source = labelled.imagenet_subset_source("imagenet2012_subset/1pct",
                                           str(tmp_path))
  assert len(source) == 3
  assert sorted(labelled.source_labels(source)) == sorted(
      names.index(name.split("_")[0]) for name in listed)


def test_prepare_reads_a_bucket_manual_dir_through_epath(tmp_path,
                                                         monkeypatch):
  """The archives' check goes through etils.epath, as every path does:
  os.path called a gs:// manual_dir missing."""
  checked = []

  def exists(path):
    checked.append(str(path))
    return True

  monkeypatch.setattr(type(epath.Path("gs://bucket/archives")), "exists",
                      exists)

  class Prepared(Exception):
    pass

  def builder(*args, **kwargs):
    raise Prepared  # past the archives' check: stop before TFDS runs

  monkeypatch.setattr(preparation.tfds, "builder", builder)
  with pytest.raises(Prepared):
    data.prepare_dataset("imagenet100", data_dir=str(tmp_path),
                         manual_dir="gs://bucket/archives")
  assert checked == ["gs://bucket/archives/ILSVRC2012_img_train.tar",
                     "gs://bucket/archives/ILSVRC2012_img_val.tar"]


@pytest.mark.parametrize("name", ["imagenet1k_subset_1pct",
                                  "imagenet1k_subset_10pct"])
def test_imagenet_1k_subset_needs_the_imagenet_archives(tmp_path, name):
  with pytest.raises(data.DatasetNotPreparedError,
                     match="ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar"):
    data.prepare_dataset(name, data_dir=str(tmp_path),
                         manual_dir=str(tmp_path))


def test_an_unknown_name_to_prepare_lists_the_names(tmp_path):
  with pytest.raises(errors.InvalidValueError) as error:
    data.prepare_dataset("image_folder", data_dir=str(tmp_path))
  message = str(error.value)
  assert "imagenet1k_subset_1pct" in message and "cifar10" in message
  assert "first use" in message  # where image folders are prepared


def test_imagenet100_builder_finds_archives_in_a_bucket(monkeypatch):
  """Its own archive check goes through epath too (gs:// manual_dir)."""
  bucket = epath.Path("gs://bucket/archives")
  monkeypatch.setattr(type(bucket), "exists", lambda path: True)
  monkeypatch.setattr(builders.imagenet100.imagenet_common,
                      "get_validation_labels", lambda path: {})

  class DownloadManager:
    manual_dir = bucket

    def iter_archive(self, path):
      assert str(path).startswith("gs://bucket/archives/")
      return iter(())

  generators = builders.Imagenet100._split_generators(  # pylint: disable=protected-access
      builders.Imagenet100.__new__(builders.Imagenet100), DownloadManager())
  assert set(generators) == {"train", "validation"}
