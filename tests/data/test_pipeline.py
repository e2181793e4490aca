"""Pretraining and eval pipelines on the real (offline) digits dataset.

Determinism across restarts, device counts and (simulated) processes; every
eval example exactly once; per-process shares without overlap.
"""
import importlib.util
import pathlib

import jax
import numpy as np
import pytest
import tensorflow as tf

import mio_jax.data as data
from mio_jax import config_base
from mio_jax import mesh as mesh_lib
from mio_jax.data import augment
from mio_jax.data import augment_recipe
from mio_jax.data import indexing
from mio_jax.data import pipeline
from mio_jax.data import registry

_CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"


def digits_config(data_dir):
  """configs/digits.py at 16 px, batch 16, eval batch 128, in data_dir."""
  spec = importlib.util.spec_from_file_location("digits_cfg",
                                                _CONFIGS / "digits.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.dataset.data_dir = str(data_dir)
  config.dataset.image_size = 16
  config.dataset.prefetch = 1
  config.batch_size = 16
  config.eval.batch_size = 128
  return config


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  data.prepare_digits(str(data_dir))
  pipeline.load_source.cache_clear()
  return digits_config(data_dir)


def _numpy(batch):
  return {k: np.asarray(v) for k, v in batch.items()}


def _take(iterator, n):
  return [_numpy(next(iterator)) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ---- pretraining ---------------------------------------------------------


def test_pretrain_batch_shapes_and_values(config):
  mesh = mesh_lib.make_data_mesh()
  batch = next(data.pretrain_batches(config, mesh))
  assert batch["view1"].shape == (16, 16, 16, 3)
  assert batch["view1"].dtype == np.float32
  assert batch["label"].dtype == np.int32
  assert batch["view1"].sharding.is_equivalent_to(
      mesh_lib.batch_sharding(mesh), 4)
  b = _numpy(batch)
  assert np.isfinite(b["view1"]).all()
  assert not np.array_equal(b["view1"], b["view2"])  # two different views
  # Normalised: roughly zero-mean, unit-scale pixels.
  assert -1.5 < b["view1"].mean() < 1.5 and 0.3 < b["view1"].std() < 3.0
  assert set(b["label"]) <= set(range(10))


def test_restart_at_step_k_equals_kth_batch_across_epoch_boundary(config):
  mesh = mesh_lib.make_data_mesh()
  steps = indexing.steps_per_epoch(1500, config.batch_size)  # 93
  fresh = _take(data.pretrain_batches(config, mesh), steps + 1)
  assert not np.array_equal(fresh[0]["view1"], fresh[1]["view1"])
  source = pipeline.load_source(registry.get_spec("digits"), "train", config.dataset.data_dir,
                                config.dataset.image_size)
  for k in (1, steps - 1, steps):
    resumed = _take(data.pretrain_batches(config, mesh, start_step=k), 1)[0]
    _assert_batches_equal(resumed, fresh[k])
    indices, epoch = indexing.pretrain_step_examples(
        k, seed=config.seed, num_examples=1500,
        global_batch_size=config.batch_size)
    assert epoch == (k // steps)
    np.testing.assert_array_equal(resumed["label"], source.labels[indices])


def test_one_and_eight_devices_give_identical_global_batches(config):
  one = data.pretrain_batches(config,
                              mesh_lib.make_data_mesh(jax.devices()[:1]),
                              start_step=5)
  eight = data.pretrain_batches(config, mesh_lib.make_data_mesh(),
                                start_step=5)
  assert len(jax.devices()) == 8
  for a, b in zip(_take(one, 2), _take(eight, 2)):
    _assert_batches_equal(a, b)


def test_two_simulated_processes_together_equal_one_process(config):
  source = pipeline.load_source(registry.get_spec("digits"), "train", config.dataset.data_dir,
                                config.dataset.image_size)
  spec = registry.get_spec("digits")
  whole = next(iter(pipeline.pretrain_dataset(
      source, config, spec=spec, rows=slice(0, 16),
      start_step=3).as_numpy_iterator()))
  halves = [next(iter(pipeline.pretrain_dataset(
      source, config, spec=spec, rows=indexing.process_slice(16, p, 2),
      start_step=3).as_numpy_iterator())) for p in (0, 1)]
  for k in whole:
    np.testing.assert_array_equal(
        np.concatenate([h[k] for h in halves]), whole[k], err_msg=k)


def test_seed_changes_batches(config):
  mesh = mesh_lib.make_data_mesh()
  a = _take(data.pretrain_batches(config, mesh), 1)[0]
  other = config.copy_and_resolve_references()
  other.seed = 1
  b = _take(data.pretrain_batches(other, mesh), 1)[0]
  assert not np.array_equal(a["view1"], b["view1"])


# ---- evaluation --------------------------------------------------------------


def test_eval_pass_covers_every_example_once_with_mask(config):
  mesh = mesh_lib.make_data_mesh()
  batches = [_numpy(b) for b in data.eval_batches(config, mesh, "test")]
  assert len(batches) == 3  # 297 examples in batches of 128
  masks = np.concatenate([b["mask"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])
  assert masks.sum() == 297 and not masks[297:].any()
  source = pipeline.load_source(registry.get_spec("digits"), "test", config.dataset.data_dir,
                                config.dataset.image_size)
  np.testing.assert_array_equal(labels[masks], source.labels)
  assert (labels[~masks] == -1).all()
  assert batches[0]["image"].shape == (128, 16, 16, 3)
  # No augmentation: the pass is repeatable.
  again = _numpy(next(data.eval_batches(config, mesh, "test")))
  np.testing.assert_array_equal(again["image"], batches[0]["image"])
  with pytest.raises(ValueError, match="Unknown eval split"):
    data.eval_batches(config, mesh, "validation")


def test_batch_not_divisible_by_devices_is_a_clear_error(config):
  bad = config.copy_and_resolve_references()
  bad.batch_size = 12
  with pytest.raises(ValueError, match="not divisible by the 8 devices"):
    data.pretrain_batches(bad, mesh_lib.make_data_mesh())


def test_tensorflow_sees_no_accelerator():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  assert tf.config.get_visible_devices("GPU") == []
  assert all(d.device_type == "CPU" for d in tf.config.get_visible_devices())


# ---- what the host emits for the device, and JPEG records --------------------


def _first_batch(source, config, start_step=0):
  rows = slice(0, int(config.batch_size))
  return next(iter(pipeline.pretrain_dataset(
      source, config, spec=data.dataset_spec(config), rows=rows,
      start_step=start_step).as_numpy_iterator()))


def test_on_device_views_are_the_host_geometry_as_uint8_with_indices(config):
  host = config.copy_and_resolve_references()
  host.augment.rotation_degrees = 0.0  # host-only ops (refused on device)
  host.augment.translate_pixels = 0
  host.augment.gaussian_noise_std = 0.0
  host.augment.color_jitter_strength = 0.0
  host.augment.grayscale_prob = 0.0
  device = host.copy_and_resolve_references()
  device.augment.on_device = True
  source = pipeline.load_source(registry.get_spec("digits"), "train", config.dataset.data_dir,
                                config.dataset.image_size)
  floats, uint8s = (_first_batch(source, c, start_step=7)
                    for c in (host, device))
  indices, _ = indexing.pretrain_step_examples(
      7, seed=config.seed, num_examples=1500,
      global_batch_size=config.batch_size)
  spec = registry.get_spec("digits")
  for batch in (floats, uint8s):
    np.testing.assert_array_equal(batch["index"], indices)
  for view in ("view1", "view2"):
    assert uint8s[view].dtype == np.uint8
    unit = floats[view] * np.array(spec.std) + np.array(spec.mean)
    np.testing.assert_allclose(uint8s[view] / 255.0, unit, atol=0.5 / 255
                               + 1e-6)


class _Records:
  """A stand-in for `tfds.data_source` over encoded images."""

  def __init__(self, encoded):
    self.encoded = encoded

  def __len__(self):
    return len(self.encoded)

  def __getitems__(self, keys):
    return [{"image": self.encoded[k], "label": k} for k in keys]


def test_jpeg_records_decoded_inside_the_crops_give_the_decoded_views():
  # Views from JPEG/PNG bytes (decode_and_crop_jpeg of the crop windows'
  # bounding box) equal views from the same images decoded whole: the
  # windows depend only on the image's shape and the example's key.
  rng = np.random.default_rng(0)
  encoded = []
  for i in range(8):
    image = rng.integers(0, 256, (37 + 3 * i, 52, 3), dtype=np.uint8)
    encode = tf.io.encode_png if i == 5 else tf.io.encode_jpeg
    encoded.append(encode(image).numpy())
  config = config_base.base_config()
  config.dataset.name = "imagenet100"
  config.dataset.image_size = 16
  config.batch_size = 8
  config.augment.blur_prob = 0.5
  config.augment.solarize_prob = 0.2
  spec = registry.get_spec("imagenet100")
  from_bytes = _first_batch(pipeline.EncodedSource(_Records(encoded)), config)
  from_pixels = pipeline.two_view_fn(
      augment_recipe.AugmentParams.from_config(config), seed=int(config.seed),
      mean=spec.mean, std=spec.std, encoded=False)
  assert from_bytes["view1"].shape == (8, 16, 16, 3)
  for row, index in enumerate(from_bytes["index"]):
    pixels = tf.io.decode_image(encoded[index], channels=3)
    expected = from_pixels(pixels, tf.constant(index, tf.int64),
                           tf.constant(index, tf.int64),
                           tf.constant(0, tf.int64))  # epoch 0
    for k in ("view1", "view2"):
      np.testing.assert_allclose(from_bytes[k][row], expected[k].numpy(),
                                 atol=1e-5, err_msg=f"{k} of {index}")
