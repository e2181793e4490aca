"""Each augmentation op eagerly and inside tf.data; ranges, shapes, keys."""
import numpy as np
import pytest

from mio_jax import config_base
from mio_jax.data import augment
from mio_jax.data import augment_recipe
from mio_jax.host_tf import tf

SIZE = 16


def _image(height=20, width=24, channels=3, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (height, width, channels), dtype=np.uint8)


def _float_image(seed=0):
  return tf.image.convert_image_dtype(_image(SIZE, SIZE, seed=seed), tf.float32)


def _key(seed=0, epoch=0, index=0, view=1):
  return augment.view_key(augment.example_key(seed, epoch, index), view)


def _in_tf_data(fn, image, key):
  """fn(image, key) run as a tf.data map (graph mode, as in the pipeline)."""
  ds = tf.data.Dataset.from_tensors((image, key)).map(fn)
  return next(iter(ds)).numpy()


# Ops taking (image, seed): name -> (op, input maker).
_SEEDED_OPS = {
    "random_resized_crop": (
        lambda x, k: augment.random_resized_crop(
            x, k, size=SIZE, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)),
        _image),
    "random_flip": (augment.random_flip, _float_image),
    "color_jitter": (
        lambda x, k: augment.color_jitter(x, k, strength=1.0,
                                          random_order=True), _float_image),
    "color_jitter_fixed_order": (
        lambda x, k: augment.color_jitter(x, k, strength=0.5,
                                          random_order=False), _float_image),
    "gaussian_blur": (augment.gaussian_blur, _float_image),
    "random_affine": (
        lambda x, k: augment.random_affine(x, k, max_degrees=15.0,
                                           max_translate=3), _float_image),
    "gaussian_noise": (
        lambda x, k: augment.gaussian_noise(x, k, std=0.1), _float_image),
    "augment_view": (
        lambda x, k: augment.augment_view(
            x, k, augment_recipe.AugmentParams(
                image_size=SIZE, blur_prob=0.5, solarize_prob=0.2,
                rotation_degrees=10, translate_pixels=2,
                gaussian_noise_std=0.05)),
        _image),
}


@pytest.mark.parametrize("name", sorted(_SEEDED_OPS))
def test_seeded_op_eager_equals_tf_data_and_is_in_range(name):
  op, make_input = _SEEDED_OPS[name]
  image = make_input()
  key = _key()
  eager = op(tf.constant(image), key).numpy()
  graph = _in_tf_data(op, image, key)
  assert eager.shape == (SIZE, SIZE, 3)
  assert eager.dtype == np.float32
  assert 0.0 <= eager.min() and eager.max() <= 1.0
  np.testing.assert_allclose(eager, graph, atol=1e-5)


@pytest.mark.parametrize("name", sorted(_SEEDED_OPS))
def test_seeded_op_same_key_same_output_other_key_differs(name):
  op, make_input = _SEEDED_OPS[name]
  image = tf.constant(make_input())
  first = op(image, _key(index=3)).numpy()
  np.testing.assert_array_equal(first, op(image, _key(index=3)).numpy())
  # Flip has two outcomes: look at several keys for a different one.
  others = [op(image, _key(index=i)).numpy() for i in range(4, 12)]
  assert any(not np.allclose(first, o) for o in others)


def test_keys_differ_by_seed_epoch_index_and_view():
  keys = {tuple(_key(*args).numpy()) for args in [
      (0, 0, 0, 1), (1, 0, 0, 1), (0, 1, 0, 1), (0, 0, 1, 1), (0, 0, 0, 2)]}
  assert len(keys) == 5


def test_deterministic_ops_eager_and_tf_data():
  image = _float_image()
  for op in (augment.to_grayscale, augment.solarize):
    eager = op(image).numpy()
    ds = tf.data.Dataset.from_tensors(image).map(op)
    np.testing.assert_allclose(eager, next(iter(ds)).numpy(), atol=1e-6)
    assert eager.shape == (SIZE, SIZE, 3)
  gray = augment.to_grayscale(image).numpy()
  np.testing.assert_allclose(gray[..., 0], gray[..., 2])
  solar = augment.solarize(tf.constant([0.2, 0.5, 0.9])).numpy()
  np.testing.assert_allclose(solar, [0.2, 0.5, 0.1], atol=1e-6)


def test_eval_resize_crop_shapes_eager_and_tf_data():
  image = _image(30, 40)
  op = lambda x: augment.eval_resize_crop(x, size=SIZE, crop_fraction=0.875)
  eager = op(tf.constant(image)).numpy()
  ds = tf.data.Dataset.from_tensors(image).map(op)
  np.testing.assert_allclose(eager, next(iter(ds)).numpy(), atol=1e-6)
  assert eager.shape == (SIZE, SIZE, 3)
  # A square image at the target size with crop fraction 1 is unchanged.
  square = _image(SIZE, SIZE)
  same = augment.eval_resize_crop(tf.constant(square), size=SIZE,
                                  crop_fraction=1.0).numpy()
  np.testing.assert_allclose(same * 255.0, square, atol=1e-3)


def test_affine_without_motion_is_identity_and_shift_moves_pixels():
  image = _float_image()
  still = augment.random_affine(image, _key(), max_degrees=0.0,
                                max_translate=0).numpy()
  np.testing.assert_allclose(still, image.numpy(), atol=1e-5)


def test_random_resized_crop_full_scale_keeps_whole_image():
  image = _image(SIZE, SIZE)
  out = augment.random_resized_crop(tf.constant(image), _key(), size=SIZE,
                                    scale=(1.0, 1.0), ratio=(1.0, 1.0)).numpy()
  np.testing.assert_allclose(out * 255.0, image, atol=1e-3)


def test_random_apply_probabilities():
  image = tf.zeros([2, 2, 3])
  ones = lambda x: x + 1.0
  assert augment.random_apply(ones, image, _key(), 0.0).numpy().max() == 0.0
  assert augment.random_apply(ones, image, _key(), 1.0).numpy().min() == 1.0
  hits = [augment.random_apply(ones, image, _key(index=i), 0.3).numpy()[0, 0, 0]
          for i in range(200)]
  assert 0.15 < np.mean(hits) < 0.45


def test_normalize():
  out = augment.normalize(tf.fill([1, 1, 3], 0.5), (0.5, 0.25, 0.0),
                          (0.5, 0.25, 1.0)).numpy()
  np.testing.assert_allclose(out[0, 0], [0.0, 1.0, 0.5])


def test_params_from_config_reads_every_augment_key():
  config = config_base.base_config()
  params = augment_recipe.AugmentParams.from_config(config)
  assert params.image_size == config.dataset.image_size
  for key in config.augment.keys():
    assert getattr(params, key) == pytest.approx(config.augment[key]), key


def test_gaussian_blur_keeps_constants_and_smooths_noise():
  constant = tf.fill([SIZE, SIZE, 3], 0.25)
  np.testing.assert_allclose(augment.gaussian_blur(constant, _key()).numpy(),
                             0.25, atol=1e-6)
  noise = tf.random.stateless_uniform([64, 64, 3], [1, 2])
  blurred = [augment.gaussian_blur(noise, _key(index=i)).numpy()
             for i in range(4)]
  assert all(b.std() < noise.numpy().std() for b in blurred)


@pytest.mark.parametrize("key,value,message", [
    ("grayscale_prob", 1.5, "augment.grayscale_prob=1.5"),
    ("crop_scale", (0.5, 0.2), "augment.crop_scale"),
    ("color_jitter_strength", 2.0, "augment.color_jitter_strength"),
    ("translate_pixels", -1, "augment.translate_pixels"),
])
def test_bad_augment_settings_name_the_key(key, value, message):
  config = config_base.base_config()
  config.augment[key] = value
  with pytest.raises(ValueError, match=message):
    augment_recipe.AugmentParams.from_config(config)


@pytest.mark.parametrize("height,width", [(40, 50), (10, 12), (20, 12)])
def test_resize_view_eager_equals_tf_data_and_is_in_range(height, width):
  crop = _image(height, width)
  op = lambda x: augment.resize_view(x, SIZE)
  eager = op(tf.constant(crop)).numpy()
  graph = next(iter(tf.data.Dataset.from_tensors(crop).map(op))).numpy()
  np.testing.assert_allclose(eager, graph, atol=1e-6)
  assert eager.shape == (SIZE, SIZE, 3) and eager.dtype == np.float32
  assert 0.0 <= eager.min() and eager.max() <= 1.0


def test_resize_view_averages_areas_when_shrinking():
  crop = _image(2 * SIZE, 2 * SIZE)
  blocks = crop.reshape(SIZE, 2, SIZE, 2, 3).mean(axis=(1, 3)) / 255.0
  np.testing.assert_allclose(augment.resize_view(tf.constant(crop), SIZE),
                             blocks, atol=1e-5)
  small = _image(SIZE // 2, SIZE // 2)  # grows: bilinear
  expected = tf.image.resize(small.astype(np.float32), [SIZE, SIZE]) / 255.0
  np.testing.assert_allclose(augment.resize_view(tf.constant(small), SIZE),
                             expected, atol=1e-5)


@pytest.mark.parametrize("encode", [tf.io.encode_jpeg, tf.io.encode_png])
def test_decode_windows_equal_slices_of_a_whole_decode(encode):
  encoded = encode(_image(45, 61)).numpy()
  whole = tf.io.decode_image(encoded, channels=3).numpy()

  def crops(contents):
    shape = augment.encoded_image_shape(contents)
    windows = [augment.crop_window(shape, _key(index=i), scale=(0.08, 1.0),
                                   ratio=(3 / 4, 4 / 3)) for i in (0, 1)]
    return augment.decode_windows(contents, windows), windows

  np.testing.assert_array_equal(
      augment.encoded_image_shape(tf.constant(encoded)), whole.shape)
  eager, windows = crops(tf.constant(encoded))
  graph = next(iter(tf.data.Dataset.from_tensors(encoded).map(
      lambda x: tuple(crops(x)[0]))))
  for crop, in_graph, (begin, size) in zip(eager, graph, windows):
    (top, left, _), (height, width, _) = begin.numpy(), size.numpy()
    expected = whole[top:top + height, left:left + width]
    np.testing.assert_array_equal(crop.numpy(), expected)
    np.testing.assert_array_equal(in_graph.numpy(), expected)
