"""Host-side image ops for the two-view augmentation, as small tf functions.

Every random choice is a stateless TF op driven by an explicit `seed`
(an int64 tensor of shape [2]), so the same key always gives the same view,
in eager mode and inside `tf.data` alike. Keys come from
`example_key(seed, epoch, index)` and `view_key(key, view)`; each op draws
its own sub-key with `tf.random.experimental.stateless_split`.

Images are uint8 in, float32 in [0, 1] after `random_resized_crop` (or
`eval_resize_crop`), HWC with 3 channels. The recipe follows SimCLR/MIO:
random resized crop, horizontal flip, then the colour stage of
`augment_recipe` (colour jitter, grayscale, blur, solarise, and the
small-image extras used for digits: rotation/translation, Gaussian
noise), which this module implements with tf ops.

A view is built in two stages so that the host can stop after the first:
`crop_window` + `resize_view` + flip (geometry, `geometric_view`) and the
colour stage (`host_colour`). With `AugmentParams.on_device` the host emits
the geometric views as uint8 and `mio_jax.data.device_augment` applies the
colour ops on the accelerator. The crop window needs only the image's
shape, so JPEG records are decoded only inside it (`decode_windows`).
"""
import functools
import math
from typing import Callable

from mio_jax.data import augment_recipe
from mio_jax.host_tf import tf

# Pixels decoded around the crop windows of a JPEG (see decode_windows).
_DECODE_MARGIN = 2


# ---- keys ------------------------------------------------------------------


def example_key(seed, epoch, index) -> tf.Tensor:
  """Key of one example in one epoch: int64 [2] from (seed, epoch, index)."""
  key = tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)])
  return tf.random.experimental.stateless_fold_in(key, tf.cast(index, tf.int64))


def view_key(key: tf.Tensor, view: int) -> tf.Tensor:
  """Independent keys for the two views of one example."""
  return tf.random.experimental.stateless_fold_in(key, tf.cast(view, tf.int64))


def random_apply(fn: Callable[[tf.Tensor], tf.Tensor], image: tf.Tensor,
                 seed: tf.Tensor, prob: float) -> tf.Tensor:
  """`fn(image)` with probability `prob`, else `image`."""
  if prob <= 0.0:
    return image
  if prob >= 1.0:
    return fn(image)
  draw = tf.random.stateless_uniform([], seed)
  return tf.cond(draw < prob, lambda: fn(image), lambda: image)


# ---- geometry --------------------------------------------------------------


def _resize_float(image: tf.Tensor, height, width) -> tf.Tensor:
  """Bilinear (antialiased) resize to float32 in [0, 1]."""
  image = tf.image.convert_image_dtype(image, tf.float32)
  image = tf.image.resize(image, tf.stack([height, width]),
                          method="bilinear", antialias=True)
  return tf.clip_by_value(image, 0.0, 1.0)


def crop_window(image_shape: tf.Tensor, seed: tf.Tensor, *,
                scale: tuple[float, float],
                ratio: tuple[float, float]) -> tuple[tf.Tensor, tf.Tensor]:
  """(begin, size), int32 [3] each: a window of random area and aspect.

  The area fraction is drawn from `scale`, the aspect ratio from `ratio`;
  when no window fits after 10 tries the whole image is used (TF's
  fallback; torchvision falls back to a centre crop). Only the shape
  [H, W, C] is needed, so an encoded JPEG need not be decoded to draw it.
  """
  whole_image = tf.constant([[[0.0, 0.0, 1.0, 1.0]]])
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      image_shape, bounding_boxes=whole_image, seed=seed,
      min_object_covered=0.0, aspect_ratio_range=ratio, area_range=scale,
      max_attempts=10, use_image_if_no_bounding_boxes=True)
  return begin, size


def resize_view(crop: tf.Tensor, size: int) -> tf.Tensor:
  """uint8 crop [h, w, C] -> float32 [size, size, C] in [0, 1].

  Area averaging when the crop shrinks in both sides (anti-aliased, as
  OpenCV's INTER_AREA that FFCV uses), bilinear otherwise. Measured in
  tf.data at 224 px: 2.5x cheaper than the antialiased bilinear resize
  (scale_and_translate) for the same anti-aliasing where it matters.
  When only one side shrinks it shrinks by at most the aspect-ratio
  bound (4/3 by default), where bilinear aliases little.
  """
  shrinks = tf.reduce_all(tf.shape(crop)[:2] >= size)
  crop = tf.cast(crop, tf.float32)

  def resize(method):
    return lambda: tf.image.resize(crop, [size, size], method=method)

  image = tf.cond(shrinks, resize("area"), resize("bilinear"))
  image = tf.ensure_shape(image, [size, size, crop.shape[-1]])
  return tf.clip_by_value(image / 255.0, 0.0, 1.0)


def random_resized_crop(image: tf.Tensor, seed: tf.Tensor, *, size: int,
                        scale: tuple[float, float],
                        ratio: tuple[float, float]) -> tf.Tensor:
  """A `crop_window` of a uint8 HWC image, resized to float32 [size, size, C]."""
  begin, crop_size = crop_window(tf.shape(image), seed, scale=scale,
                                 ratio=ratio)
  crop = tf.slice(image, begin, crop_size)
  crop.set_shape([None, None, image.shape[-1]])
  return resize_view(crop, size)


def encoded_image_shape(encoded: tf.Tensor) -> tf.Tensor:
  """[H, W, 3] of an encoded image; JPEGs are not decoded for it."""
  return tf.cond(
      tf.io.is_jpeg(encoded),
      lambda: tf.concat([tf.image.extract_jpeg_shape(encoded)[:2], [3]], 0),
      lambda: tf.shape(_decode_rgb(encoded)))


def _decode_rgb(encoded: tf.Tensor) -> tf.Tensor:
  return tf.io.decode_image(encoded, channels=3, expand_animations=False)


def decode_windows(encoded: tf.Tensor,
                   windows: list[tuple[tf.Tensor, tf.Tensor]]) -> list:
  """The uint8 crops of `windows` ((begin, size) pairs) of an encoded image.

  A JPEG is decoded once, only inside the smallest box holding every
  window (`decode_and_crop_jpeg`); measured at 224 px with two views
  that was 10% cheaper than a whole decode and 40% cheaper than one
  partial decode per view (each re-reads the entropy-coded rows). The
  box has a margin of `_DECODE_MARGIN` pixels: without it, 4:2:0 JPEGs
  differ from a whole decode along the box's edges (chroma upsampling
  lacks its neighbours); with it the crops are pixel-identical (tested).
  Other formats (PNG, GIF) are decoded whole.
  """
  image_hw = encoded_image_shape(encoded)[:2]
  top_left = tf.maximum(tf.reduce_min(
      tf.stack([b[:2] for b, _ in windows]), axis=0) - _DECODE_MARGIN, 0)
  bottom_right = tf.minimum(tf.reduce_max(
      tf.stack([b[:2] + s[:2] for b, s in windows]), axis=0) + _DECODE_MARGIN,
                            image_hw)
  box = tf.concat([top_left, bottom_right - top_left], 0)

  def decode_box():
    return tf.image.decode_and_crop_jpeg(encoded, box, channels=3)

  def decode_whole_then_box():
    return tf.slice(_decode_rgb(encoded), tf.concat([top_left, [0]], 0),
                    tf.concat([box[2:], [3]], 0))

  region = tf.cond(tf.io.is_jpeg(encoded), decode_box, decode_whole_then_box)
  crops = []
  for begin, size in windows:
    crop = tf.slice(region, tf.concat([begin[:2] - top_left, [0]], 0),
                    tf.concat([size[:2], [3]], 0))
    crops.append(tf.ensure_shape(crop, [None, None, 3]))
  return crops


def eval_resize_crop(image: tf.Tensor, *, size: int,
                     crop_fraction: float) -> tf.Tensor:
  """Evaluation view: resize the short side to size/crop_fraction, centre crop.

  crop_fraction 0.875 is the ImageNet convention (256 -> 224); 1.0 keeps the
  whole (square) image. float32 [size, size, C] in [0, 1] out.
  """
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  factor = (size / crop_fraction) / tf.reduce_min(shape)
  new_hw = tf.maximum(tf.cast(tf.round(shape * factor), tf.int32), size)
  resized = _resize_float(image, new_hw[0], new_hw[1])
  top = (new_hw[0] - size) // 2
  left = (new_hw[1] - size) // 2
  return tf.image.crop_to_bounding_box(resized, top, left, size, size)


def random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Horizontal flip with probability 1/2."""
  return tf.image.stateless_random_flip_left_right(image, seed)


def random_affine(image: tf.Tensor, seed: tf.Tensor, *, max_degrees: float,
                  max_translate: float) -> tf.Tensor:
  """Rotation about the centre by U(-d, d) degrees and a U(-t, t) px shift.

  Uncovered pixels are filled with 0 (black: the digits background).
  """
  angle_seed, shift_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 2))
  angle = tf.random.stateless_uniform(
      [], angle_seed, -max_degrees, max_degrees) * (math.pi / 180.0)
  shift_x, shift_y = tf.unstack(tf.random.stateless_uniform(
      [2], shift_seed, -float(max_translate), float(max_translate)))
  height = tf.cast(tf.shape(image)[0], tf.float32)
  width = tf.cast(tf.shape(image)[1], tf.float32)
  cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
  cos, sin = tf.cos(angle), tf.sin(angle)
  # The transform maps output (x, y) to the input point it samples:
  # input = R(-angle) (output - centre - shift) + centre.
  transform = tf.stack([
      cos, sin, cx - cos * (cx + shift_x) - sin * (cy + shift_y),
      -sin, cos, cy + sin * (cx + shift_x) - cos * (cy + shift_y),
      0.0, 0.0,
  ])
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None], transforms=transform[None],
      output_shape=tf.shape(image)[:2], fill_value=0.0,
      interpolation="BILINEAR", fill_mode="CONSTANT")
  return out[0]


# ---- colour ----------------------------------------------------------------


def _brightness(image: tf.Tensor, seed: tf.Tensor, low: float,
                high: float) -> tf.Tensor:
  # torchvision's definition; TF's own random_brightness adds a delta.
  factor = tf.random.stateless_uniform([], seed, low, high)
  return tf.clip_by_value(image * factor, 0.0, 1.0)


def _contrast(image: tf.Tensor, seed: tf.Tensor, low: float,
              high: float) -> tf.Tensor:
  return tf.clip_by_value(
      tf.image.stateless_random_contrast(image, low, high, seed), 0.0, 1.0)


def _saturation(image: tf.Tensor, seed: tf.Tensor, low: float,
                high: float) -> tf.Tensor:
  return tf.clip_by_value(
      tf.image.stateless_random_saturation(image, low, high, seed), 0.0, 1.0)


def _hue(image: tf.Tensor, seed: tf.Tensor, low: float,
         high: float) -> tf.Tensor:
  del low  # TF draws the shift from U(-high, high); the range is symmetric
  return tf.clip_by_value(tf.image.stateless_random_hue(image, high, seed),
                          0.0, 1.0)


_JITTER_OPS = {"brightness": _brightness, "contrast": _contrast,
               "saturation": _saturation, "hue": _hue}


def color_jitter(image: tf.Tensor, seed: tf.Tensor, *, strength: float,
                 random_order: bool) -> tf.Tensor:
  """SimCLR colour jitter (`augment_recipe.JITTER_OPS`, `jitter_ranges`).

  With `random_order` the four ops run in a random permutation, as
  torchvision's ColorJitter does.
  """
  ranges = augment_recipe.jitter_ranges(strength)
  seeds = tf.unstack(tf.random.experimental.stateless_split(
      seed, augment_recipe.NUM_JITTER_SUBKEYS))
  ops = [functools.partial(_JITTER_OPS[name], seed=seeds[i],
                           low=ranges[name][0], high=ranges[name][1])
         for i, name in enumerate(augment_recipe.JITTER_OPS)]
  if not random_order:
    for op in ops:
      image = op(image)
    return image
  order = tf.argsort(tf.random.stateless_uniform(
      [len(ops)], seeds[augment_recipe.JITTER_ORDER_SUBKEY]))
  shape = image.shape  # switch_case forgets static shapes; blur needs them
  for position in range(len(ops)):
    image = tf.ensure_shape(tf.switch_case(
        order[position], [lambda op=op: op(image) for op in ops]), shape)
  return image


def to_grayscale(image: tf.Tensor) -> tf.Tensor:
  """Luma, replicated to 3 channels."""
  return tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image))


def _reflect_blur_matrix(kernel: tf.Tensor, size: int) -> tf.Tensor:
  """(size, size) M with (M @ x)[i] = sum_t kernel[t] x[reflect(i + t - r)]."""
  radius = (kernel.shape[0] - 1) // 2
  taps = tf.range(size)[:, None] + tf.range(-radius, radius + 1)[None, :]
  taps = tf.abs(taps)  # reflect at the top/left edge
  taps = tf.where(taps > size - 1, 2 * (size - 1) - taps, taps)  # bottom/right
  rows = tf.broadcast_to(tf.range(size)[:, None], tf.shape(taps))
  weights = tf.broadcast_to(kernel[None, :], tf.shape(taps))
  flat = tf.math.unsorted_segment_sum(weights, rows * size + taps, size * size)
  return tf.reshape(flat, [size, size])


def gaussian_blur(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Separable Gaussian blur, sigma ~ U(0.1, 2), kernel ~10% of the side.

  Written as two matrix products with banded (reflect-padded) matrices:
  on CPU that ran about 10x faster than `tf.nn.depthwise_conv2d` at 224 px
  (1.4 ms vs 35 ms per image), with the same result.
  """
  height, width = image.shape[0], image.shape[1]
  if height is None or width is None:
    raise ValueError("gaussian_blur needs a static image size.")
  radius = augment_recipe.blur_radius(height, width)
  sigma = tf.random.stateless_uniform([], seed,
                                      *augment_recipe.BLUR_SIGMA_RANGE)
  x = tf.range(-radius, radius + 1, dtype=tf.float32)
  kernel = tf.exp(-(x ** 2) / (2.0 * sigma ** 2))
  kernel /= tf.reduce_sum(kernel)
  image = tf.einsum("ij,jwc->iwc", _reflect_blur_matrix(kernel, height), image)
  return tf.einsum("ij,hjc->hic", _reflect_blur_matrix(kernel, width), image)


def solarize(image: tf.Tensor,
             threshold: float = augment_recipe.SOLARIZE_THRESHOLD
             ) -> tf.Tensor:
  """Invert pixels at or above `threshold` (images in [0, 1])."""
  return tf.where(image < threshold, image, 1.0 - image)


def gaussian_noise(image: tf.Tensor, seed: tf.Tensor, *,
                   std: float) -> tf.Tensor:
  """Additive N(0, std^2) pixel noise, clipped to [0, 1]."""
  noise = tf.random.stateless_normal(tf.shape(image), seed, stddev=std)
  return tf.clip_by_value(image + noise, 0.0, 1.0)


def normalize(image: tf.Tensor, mean, std) -> tf.Tensor:
  """(image - mean) / std per channel; image float in [0, 1]."""
  return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


# ---- one view ---------------------------------------------------------------


def view_subkeys(seed: tf.Tensor) -> list[tf.Tensor]:
  """The per-op keys of one view (crop, flip, jitter, grayscale, ...)."""
  return tf.unstack(
      tf.random.experimental.stateless_split(
          seed, augment_recipe.NUM_VIEW_SUBKEYS))


def view_crop_window(image_shape: tf.Tensor, seed: tf.Tensor,
                     params: augment_recipe.AugmentParams
                     ) -> tuple[tf.Tensor, tf.Tensor]:
  """The crop window of the view keyed by `seed` (see `crop_window`)."""
  return crop_window(image_shape,
                     view_subkeys(seed)[augment_recipe.subkey("crop")],
                     scale=params.crop_scale, ratio=params.crop_ratio)


def geometric_view(crop: tf.Tensor, seed: tf.Tensor,
                   params: augment_recipe.AugmentParams) -> tf.Tensor:
  """uint8 crop, 3 channels -> resized, maybe flipped, float32 in [0, 1]."""
  image = resize_view(crop, params.image_size)
  if params.hflip:
    image = random_flip(image,
                        view_subkeys(seed)[augment_recipe.subkey("flip")])
  return image


# The host's implementation of each op of `augment_recipe.colour_stage`.
_HOST_COLOUR_OPS = {
    "color_jitter": color_jitter,
    "grayscale": to_grayscale,
    "blur": gaussian_blur,
    "solarize": solarize,
    "affine": random_affine,
    "noise": gaussian_noise,
}


def host_colour(image: tf.Tensor, seed: tf.Tensor,
                params: augment_recipe.AugmentParams) -> tf.Tensor:
  """The colour stage and small-image extras of one view, on the host."""
  return augment_recipe.apply_colour_stage(
      image, view_subkeys(seed), params, _HOST_COLOUR_OPS, random_apply)


def finish_view(crop: tf.Tensor, seed: tf.Tensor,
                params: augment_recipe.AugmentParams) -> tf.Tensor:
  """A cropped view -> what the host emits for it.

  float32 [S, S, 3] in [0, 1] with every op applied, or with
  `params.on_device` uint8 [S, S, 3] after the geometric ops only (a
  quarter of the bytes to move; `device_augment` does the colour ops).
  """
  image = geometric_view(crop, seed, params)
  if params.on_device:
    return tf.cast(tf.round(image * 255.0), tf.uint8)
  return host_colour(image, seed, params)


def augment_view(image: tf.Tensor, seed: tf.Tensor,
                 params: augment_recipe.AugmentParams) -> tf.Tensor:
  """One host-augmented view: uint8 HWC, 3 channels -> float32 [S, S, 3].

  Every op on the host (colour included, whatever `params.on_device`).
  """
  begin, size = view_crop_window(tf.shape(image), seed, params)
  crop = tf.slice(image, begin, size)
  crop.set_shape([None, None, 3])
  return host_colour(geometric_view(crop, seed, params), seed, params)
