"""A user's folder of images: preparing, statistics, hold-out, bad folders,
changes, and the pipelines on it. Tiny images, a few files each."""
import os
import pathlib

import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

import mio_jax.data as data
from mio_jax import config_base
from mio_jax import errors
from mio_jax import mesh as mesh_lib
from mio_jax.data import dataset
from mio_jax.data import pipeline
from mio_jax.data import registry
from mio_jax.data.builders import folder_listing
from mio_jax.data.builders import image_folder
from mio_jax.data.builders import image_folder_error

_CONFIG_FILE = (pathlib.Path(__file__).resolve().parents[2] / "configs" /
                "image_folder.py")
_CLASSES = ("cat", "dog", "red panda")  # sorted; a space is kept
_SIZE = 8
# (file name, format, PIL mode, width, height): PNG and JPEG, grey and RGB,
# smaller and larger than _SIZE, portrait and landscape.
_FILES = (("a.png", "PNG", "RGB", 12, 9), ("b.jpg", "JPEG", "L", 7, 15),
          ("c.PNG", "PNG", "L", 20, 20), ("d.jpeg", "JPEG", "RGB", 5, 5))


def _colour(label, index, mode):
  """A uniform colour per image; grey images get v=r=g=b."""
  value = 40 + 50 * label + 10 * index
  return (value,) * 3 if mode == "L" else (value, 255 - value, 30 * index)


def _write_image(path, fmt, mode, width, height, colour):
  path.parent.mkdir(parents=True, exist_ok=True)
  image = PIL.Image.new("RGB", (width, height), colour)
  image.convert(mode).save(path, format=fmt)


def _make_folder(root, *, with_test=True, files=_FILES):
  """Writes the folder; returns {split: [(r, g, b) of each image]}."""
  colours = {"train": [], "test": []}
  for label, name in enumerate(_CLASSES):
    for index, (file_name, fmt, mode, width, height) in enumerate(files):
      split = "test" if with_test and index == len(files) - 1 else "train"
      colour = _colour(label, index, mode)
      _write_image(root / split / name / file_name, fmt, mode, width, height,
                   colour)
      colours[split].append(colour)
  (root / "train" / "cat" / ".DS_Store").write_bytes(b"\0")  # skipped
  return colours


def _config(root, data_dir, **overrides):
  config = config_base.load_config_file(_CONFIG_FILE)
  config.dataset.path = str(root)
  config.dataset.data_dir = str(data_dir)
  config.dataset.image_size = _SIZE
  config.dataset.prefetch = 1
  config.batch_size = 8
  config.eval.batch_size = 8
  for key, value in overrides.items():
    config.dataset[key] = value
  return config


@pytest.fixture(autouse=True)
def _fresh_sources():
  pipeline.load_source.cache_clear()
  yield
  pipeline.load_source.cache_clear()


def test_config_file_selects_image_folder_and_accepts_overrides():
  config = config_base.load_config_file(_CONFIG_FILE)
  assert config.dataset.name == registry.IMAGE_FOLDER
  assert config.dataset.path is None and config.dataset.test_fraction == 0.1
  config.model.name = "resnet34"
  config.dataset.image_size = 64
  with pytest.raises(AttributeError):
    config.dataset.folder = "typo"  # locked like every config


def test_prepares_mixed_images_with_classes_sizes_and_statistics(tmp_path):
  colours = _make_folder(tmp_path / "images")
  config = _config(tmp_path / "images", tmp_path / "tfds")
  info = data.dataset_info(config)
  assert info.num_pretrain_examples == 9
  assert info.num_eval_examples == {"train": 9, "test": 3}
  assert info.num_classes == 3
  # Uniform images stay uniform when resized: the statistics are those of
  # the training colours (JPEG may move a value by a few levels).
  train = np.array(colours["train"]) / 255.0
  np.testing.assert_allclose(info.mean, train.mean(axis=0), atol=0.02)
  np.testing.assert_allclose(info.std, train.std(axis=0), atol=0.02)

  spec = dataset.dataset_spec(config)
  builder = tfds.builder(spec.tfds_name, data_dir=str(tmp_path / "tfds"))
  assert builder.info.features["label"].names == list(_CLASSES)
  examples = tfds.as_numpy(builder.as_dataset(split="train", batch_size=-1))
  assert examples["image"].shape == (9, _SIZE, _SIZE, 3)
  assert examples["image"].dtype == np.uint8
  for label, file_name in zip(examples["label"], examples["file_name"]):
    assert file_name.decode().split(os.sep)[1] == _CLASSES[label]


def test_prepared_copy_is_reused_until_the_folder_changes(tmp_path):
  root = tmp_path / "images"
  _make_folder(root)
  config = _config(root, tmp_path / "tfds")
  first = dataset.dataset_spec(config)
  info_file = (tmp_path / "tfds" / first.tfds_name / "1.0.0" /
               "dataset_info.json")
  written = info_file.stat().st_mtime_ns
  assert dataset.dataset_spec(config) == first
  assert info_file.stat().st_mtime_ns == written  # not prepared again

  _write_image(root / "train" / "dog" / "e.png", "PNG", "RGB", 6, 6,
               (1, 2, 3))
  added = dataset.dataset_spec(config)
  assert added.tfds_name != first.tfds_name
  assert added.split_sizes["train"] == 10

  # Same name and size, new content: the mtime tells.
  path = root / "train" / "dog" / "e.png"
  _write_image(path, "PNG", "RGB", 6, 6, (200, 2, 3))
  os.utime(path, ns=(1, 1))
  assert dataset.dataset_spec(config).tfds_name != added.tfds_name

  resized = _config(root, tmp_path / "tfds", image_size=_SIZE * 2)
  assert dataset.dataset_spec(resized).tfds_name != added.tfds_name


def test_hold_out_is_stratified_and_deterministic(tmp_path):
  files = _FILES + tuple((f"x{i}.png", "PNG", "RGB", 4, 4) for i in range(6))
  _make_folder(tmp_path / "images", with_test=False, files=files)
  first = image_folder.builder_config(str(tmp_path / "images"), image_size=4,
                                      test_fraction=0.2)
  second = image_folder.builder_config(str(tmp_path / "images"), image_size=4,
                                       test_fraction=0.2)
  assert first.name == second.name
  assert first.split_files == second.split_files
  train, test = first.split_files["train"], first.split_files["test"]
  assert not set(train) & set(test)
  assert len(train) + len(test) == 3 * len(files)
  # 10 per class, 20 %: 2 test images of each class.
  assert np.bincount([label for _, label in test]).tolist() == [2, 2, 2]
  other = image_folder.builder_config(str(tmp_path / "images"), image_size=4,
                                      test_fraction=0.3)
  assert other.name != first.name


def test_pipelines_read_the_folder(tmp_path):
  _make_folder(tmp_path / "images", with_test=False,
               files=_FILES + tuple((f"x{i}.png", "PNG", "L", 9, 4)
                                        for i in range(6)))
  config = _config(tmp_path / "images", tmp_path / "tfds")
  mesh = mesh_lib.make_data_mesh()
  batches = data.pretrain_batches(config, mesh)
  for _ in range(2):
    batch = next(batches)
    assert batch["view1"].shape == batch["view2"].shape == (8, _SIZE, _SIZE,
                                                            3)
    assert np.isfinite(np.asarray(batch["view1"])).all()
  info = data.dataset_info(config)
  masks, labels = [], []
  for batch in data.eval_batches(config, mesh, "test"):
    assert batch["image"].shape == (8, _SIZE, _SIZE, 3)
    masks.append(np.asarray(batch["mask"]))
    labels.append(np.asarray(batch["label"])[masks[-1]])
  assert sum(m.sum() for m in masks) == info.num_eval_examples["test"]
  assert set(np.concatenate(labels)) == {0, 1, 2}


def _no_train(root):
  (root / "cat").mkdir(parents=True)


def _empty(root):
  (root / "train").mkdir(parents=True)


def _single_class(root):
  _write_image(root / "train" / "cat" / "a.png", "PNG", "RGB", 4, 4, (1, 1, 1))


def _loose_file(root):
  _make_folder(root)
  _write_image(root / "train" / "stray.png", "PNG", "RGB", 4, 4, (1, 1, 1))


def _empty_class(root):
  _make_folder(root)
  (root / "train" / "emu").mkdir()


def _unknown_test_class(root):
  _make_folder(root)
  _write_image(root / "test" / "zebra" / "a.png", "PNG", "RGB", 4, 4,
               (1, 1, 1))


def _unreadable(root):
  _make_folder(root)
  # An image by its name that PIL cannot read: stops (a damaged image).
  (root / "train" / "dog" / "broken.png").write_text("not an image")


def _only_not_images(root):
  _make_folder(root)
  (root / "train" / "emu").mkdir()
  (root / "train" / "emu" / "Thumbs.db").write_bytes(b"\0" * 512)
  (root / "train" / "emu" / "README").write_text("emus to come")


def _too_small_to_hold_out(root):
  _make_folder(root, with_test=False, files=_FILES[:1])


@pytest.mark.parametrize("make, named", [
    (None, ""),
    (_no_train, ""),
    (_empty, "train"),
    (_single_class, "train"),
    (_loose_file, "train/stray.png"),
    (_empty_class, "train/emu"),
    (_unknown_test_class, "test/zebra"),
    (_unreadable, "train/dog/broken.png"),
    (_only_not_images, "train/emu"),
    (_too_small_to_hold_out, "train"),
])
def test_unusable_folder_stops_with_the_path(tmp_path, make, named):
  root = tmp_path / "images"
  if make:
    make(root)
  config = _config(root, tmp_path / "tfds")
  with pytest.raises(image_folder_error.ImageFolderError) as error:
    data.dataset_info(config)
  assert isinstance(error.value, errors.UserError)
  message = str(error.value)
  assert str(root / named).rstrip("/") in message
  assert "\n" not in message


@pytest.mark.parametrize("key, value", [("path", None),
                                        ("test_fraction", 1.0),
                                        ("test_fraction", 0.0)])
def test_bad_settings_name_the_key(tmp_path, key, value):
  _make_folder(tmp_path / "images")
  config = _config(tmp_path / "images", tmp_path / "tfds", **{key: value})
  with pytest.raises(errors.InvalidValueError) as error:
    dataset.check_config(config.dataset)
  assert error.value.key == key
  with pytest.raises(errors.InvalidValueError, match=f"^{key}="):
    data.ensure_prepared(config)


def test_check_config_finds_a_missing_folder_without_listing_it(tmp_path):
  config = _config(tmp_path / "typo", tmp_path / "tfds")
  with pytest.raises(image_folder_error.ImageFolderError, match=str(tmp_path)):
    dataset.check_config(config.dataset)
  _make_folder(tmp_path / "images")
  dataset.check_config(_config(tmp_path / "images", tmp_path).dataset)
  assert not (tmp_path / "image_folder").exists()  # nothing prepared


def test_a_bucket_path_is_refused_with_the_copy_to_make(tmp_path):
  config = _config("gs://bucket/images", tmp_path / "tfds")
  with pytest.raises(image_folder_error.ImageFolderError) as error:
    dataset.check_config(config.dataset)
  message = str(error.value)
  assert message.startswith("gs://bucket/images is not on a local disk")
  assert "\n" not in message


def test_image_folder_is_a_valid_name_with_a_config_dependent_spec():
  with pytest.raises(ValueError, match="dataset_spec"):
    registry.get_spec(registry.IMAGE_FOLDER)
  dataset_config = config_base.base_config().dataset
  dataset_config.name = "mnist"
  with pytest.raises(errors.InvalidValueError, match="'image_folder'"):
    dataset.check_config(dataset_config)


# ---- images PIL opens in modes convert("RGB") would clip -------------------


def _write_array(path, array, **save_kwargs):
  path.parent.mkdir(parents=True, exist_ok=True)
  PIL.Image.fromarray(array).save(path, **save_kwargs)


def test_a_16_bit_folder_is_prepared_with_its_real_brightness(tmp_path):
  root = tmp_path / "images"
  for name, value in (("dark", 8192), ("light", 49152)):
    for index in range(2):
      _write_array(root / "train" / name / f"{index}.png",
                   np.full((6, 6), value, np.uint16))
      _write_array(root / "test" / name / f"{index}.png",
                   np.full((6, 6), value, np.uint16))
  info = data.dataset_info(_config(root, tmp_path / "tfds"))
  # (8192 + 49152) / 2 / 65535: not the 1.0 of clipped white.
  np.testing.assert_allclose(info.mean, [0.4375] * 3, atol=0.005)


# ---- files that are not images -------------------------------------------


def test_files_that_are_not_images_are_skipped_and_counted(tmp_path, caplog):
  root = tmp_path / "images"
  _make_folder(root)
  (root / "train" / "cat" / "Thumbs.db").write_bytes(
      bytes.fromhex("d0cf11e0a1b11ae1") + b"\0" * 504)  # an OLE file
  (root / "train" / "dog" / "README").write_text("where the photos come from")
  (root / "test" / "dog" / "notes.txt").write_text("not an image")
  # No extension, but PIL knows the contents: an image.
  _write_image(root / "train" / "dog" / "scan", "PNG", "RGB", 6, 6, (9, 9, 9))
  with caplog.at_level("WARNING"):
    info = data.dataset_info(_config(root, tmp_path / "tfds"))
  assert info.num_eval_examples == {"train": 10, "test": 3}
  reports = [r.getMessage() for r in caplog.records
             if "not images" in r.getMessage()]
  assert len(reports) == 1 and "\n" not in reports[0]
  assert "skipped 3 files that are not images" in reports[0]
  for name in ("Thumbs.db", "README", "notes.txt"):
    assert name in reports[0]


def test_skipped_files_do_not_change_the_prepared_copy(tmp_path):
  root = tmp_path / "images"
  _make_folder(root)
  before = folder_listing.list_folder(str(root))
  (root / "train" / "cat" / "README.md").write_text("# cats")
  after = folder_listing.list_folder(str(root))
  assert after.fingerprint == before.fingerprint
  assert after.skipped == (os.path.join("train", "cat", "README.md"),)


# ---- symbolic links: followed to files and folders; broken ones refused ---


def test_symlinked_files_class_folders_and_sub_folders_are_followed(
    tmp_path):
  elsewhere = tmp_path / "elsewhere"
  for name in ("bird", "more dogs"):
    for index in range(2):
      _write_image(elsewhere / name / f"{index}.png", "PNG", "RGB", 5, 5,
                   (index, 2, 3))
  _write_image(elsewhere / "single.png", "PNG", "RGB", 5, 5, (7, 7, 7))
  root = tmp_path / "images"
  _make_folder(root)
  (root / "train" / "bird").symlink_to(elsewhere / "bird")  # class folder
  (root / "train" / "dog" / "more").symlink_to(elsewhere / "more dogs")
  (root / "train" / "cat" / "linked.png").symlink_to(elsewhere / "single.png")
  listing = folder_listing.list_folder(str(root))
  assert listing.class_names == ("bird",) + _CLASSES
  names = [path for path, _ in listing.files["train"]]
  assert os.path.join("train", "bird", "1.png") in names
  assert os.path.join("train", "dog", "more", "0.png") in names
  assert os.path.join("train", "cat", "linked.png") in names
  assert len(names) == 9 + 2 + 2 + 1


def _broken_link_in_class(root):
  _make_folder(root)
  (root / "train" / "dog" / "gone.png").symlink_to(root / "nowhere.png")


def _broken_class_link(root):
  _make_folder(root)
  (root / "train" / "emu").symlink_to(root / "no_emus")


def _broken_test_link(root):
  _make_folder(root, with_test=False)
  (root / "test").symlink_to(root / "no_tests")


def _broken_sub_folder_link(root):
  _make_folder(root)
  (root / "train" / "cat" / "old").symlink_to(root / "no_old_cats")


def _link_loop(root):
  _make_folder(root)
  (root / "train" / "cat" / "again").symlink_to(root / "train" / "cat")


@pytest.mark.parametrize("make, named", [
    (_broken_link_in_class, "train/dog/gone.png"),
    (_broken_class_link, "train/emu"),
    (_broken_test_link, "test"),
    (_broken_sub_folder_link, "train/cat/old"),
    (_link_loop, "train/cat/again"),
])
def test_a_broken_or_looping_link_stops_with_its_path(tmp_path, make, named):
  root = tmp_path / "images"
  make(root)
  with pytest.raises(image_folder_error.ImageFolderError) as error:
    data.dataset_info(_config(root, tmp_path / "tfds"))
  message = str(error.value)
  assert str(root / named) in message and "\n" not in message
  assert "symbolic link" in message
