"""The one colour recipe: its list of ops, and both implementations follow it."""
import jax
import numpy as np
import pytest

from mio_jax.data import augment
from mio_jax.data import augment_recipe
from mio_jax.data import device_augment
from mio_jax.host_tf import tf

SIZE = 8
ColourOp = augment_recipe.ColourOp


def test_the_stage_lists_the_ops_in_order_with_probabilities_keys_settings():
  params = augment_recipe.AugmentParams(
      image_size=SIZE, color_jitter_prob=0.7, grayscale_prob=0.2,
      blur_prob=0.5, solarize_prob=0.1, rotation_degrees=5.0,
      gaussian_noise_std=0.01)
  assert augment_recipe.colour_stage(params) == (
      ColourOp("color_jitter", 0.7, "jitter_apply", "jitter",
               {"strength": 0.5, "random_order": True}),
      ColourOp("grayscale", 0.2, "grayscale_apply", None),
      ColourOp("blur", 0.5, "blur_apply", "blur"),
      ColourOp("solarize", 0.1, "solarize_apply", None),
      ColourOp("affine", 1.0, None, "affine",
               {"max_degrees": 5.0, "max_translate": 0}),
      ColourOp("noise", 1.0, None, "noise", {"std": 0.01}),
  )


def test_ops_that_cannot_run_are_left_out():
  params = augment_recipe.AugmentParams(
      image_size=SIZE, color_jitter_strength=0.0, grayscale_prob=0.0)
  assert augment_recipe.colour_stage(params) == ()


def test_each_op_gets_the_sub_keys_the_recipe_names():
  params = augment_recipe.AugmentParams(
      image_size=SIZE, color_jitter_prob=0.5, blur_prob=0.5,
      solarize_prob=0.5, translate_pixels=2, gaussian_noise_std=0.1)

  def record(name):
    return lambda image, key=None, **settings: image + [(name, key)]

  def random_apply(fn, image, key, prob):
    return fn(image + [("apply", key)]) if prob < 1 else fn(image)

  ops = {op.name: record(op.name)
         for op in augment_recipe.colour_stage(params)}
  calls = augment_recipe.apply_colour_stage(
      [], augment_recipe.VIEW_SUBKEYS, params, ops, random_apply)
  assert calls == [
      ("apply", "jitter_apply"), ("color_jitter", "jitter"),
      ("apply", "grayscale_apply"), ("grayscale", None),
      ("apply", "blur_apply"), ("blur", "blur"),
      ("apply", "solarize_apply"), ("solarize", None),
      ("affine", "affine"), ("noise", "noise")]


def test_an_op_without_an_implementation_is_refused():
  params = augment_recipe.AugmentParams(image_size=SIZE, rotation_degrees=5.0)
  with pytest.raises(ValueError, match="'affine'"):
    device_augment.augment_view(np.zeros([SIZE, SIZE, 3], np.float32),
                                jax.random.key(0), params)


def test_jitter_ranges_are_simclrs():
  ranges = augment_recipe.jitter_ranges(0.5)
  assert list(ranges) == list(augment_recipe.JITTER_OPS)
  for name in ("brightness", "contrast", "saturation"):
    assert ranges[name] == pytest.approx((0.6, 1.4))
  assert ranges["hue"] == pytest.approx((-0.1, 0.1))
  assert augment_recipe.jitter_ranges(1.25)["contrast"] == (0.0, 2.0)


@pytest.mark.parametrize("stage", [
    (ColourOp("solarize", 1.0, None, None),),
    (ColourOp("grayscale", 1.0, None, None),
     ColourOp("solarize", 1.0, None, None)),
])
def test_host_and_device_both_run_the_recipes_list(monkeypatch, stage):
  # With the default settings (jitter, grayscale) the stage is replaced:
  # an implementation with its own chain would still jitter.
  monkeypatch.setattr(augment_recipe, "colour_stage", lambda params: stage)
  params = augment_recipe.AugmentParams(image_size=SIZE,
                                        color_jitter_prob=1.0)
  image = np.random.default_rng(0).uniform(0, 1, (SIZE, SIZE, 3))
  image = image.astype(np.float32)
  expected = image
  for op in stage:
    expected = {"solarize": device_augment.solarize,
                "grayscale": device_augment.to_grayscale}[op.name](expected)
  host = augment.host_colour(tf.constant(image), tf.constant([1, 2], tf.int64),
                             params).numpy()
  device = device_augment.augment_view(image, jax.random.key(0), params)
  np.testing.assert_allclose(host, expected, atol=1e-6)
  np.testing.assert_allclose(device, expected, atol=1e-6)
