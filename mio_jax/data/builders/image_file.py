"""One file of an image folder: is it an image, and reading it as 8-bit RGB.

A file is an image when its extension is one PIL reads (any case) or, for
any other name, when PIL recognises its contents. `load_image` decodes one
image, scaled to 8 bits by its bit depth (16-bit grey divided by 257;
32-bit integer and float by the sample range the file states, refused
without one), EXIF-rotated, converted to RGB, the shorter side resized and
centre-cropped to a square. The rules as the user reads them:
`builders/image_folder.py`'s docstring.
"""
import os
from typing import Optional

import numpy as np
import PIL.Image
import PIL.ImageFile
import PIL.ImageOps

from mio_jax.data.builders.image_folder_error import ImageFolderError

# What PIL raises for a file it cannot decode (truncated, not an image,
# over its decompression-bomb limit).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError,
                  PIL.Image.DecompressionBombError)


def _image_extensions() -> frozenset[str]:
  """Lower-case extensions of the formats PIL can open and decode here.

  Stub formats (HDF5, GRIB, BUFR, WMF) only identify a file; a stray .h5
  model in a class folder is no image.
  """
  def decodes(image_format: str) -> bool:
    factory = PIL.Image.OPEN[image_format][0]
    return not (isinstance(factory, type) and
                issubclass(factory, PIL.ImageFile.StubImageFile))
  return frozenset(
      extension for extension, image_format in
      PIL.Image.registered_extensions().items()
      if image_format in PIL.Image.OPEN and decodes(image_format))


_IMAGE_EXTENSIONS = _image_extensions()
# Grey 16-bit modes (PNG, TIFF; any byte order): range 0..65535.
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# TIFF SMinSampleValue / SMaxSampleValue: the range a file states for its
# samples, what 32-bit integer and float images are scaled by.
_TIFF_SAMPLE_RANGE_TAGS = (340, 341)


def is_image(path: str) -> bool:
  """By extension, else by whether PIL recognises the contents (header)."""
  if os.path.splitext(path)[1].lower() in _IMAGE_EXTENSIONS:
    return True
  try:
    with PIL.Image.open(path):
      return True
  except PIL.UnidentifiedImageError:
    return False
  except _DECODE_ERRORS:
    # Recognised but unreadable (a damaged header, no permission): kept,
    # so that decoding stops with the path instead of dropping it unseen.
    return True


def _sample_range(image: PIL.Image.Image,
                  path: str) -> Optional[tuple[float, float]]:
  """The (low, high) sample values that map to 0 and 255, or None for modes
  convert("RGB") reads right (8-bit ones).

  convert("RGB") clips the others instead of scaling them: a 16-bit
  mid-grey (32768) became white and a float 0.5 black.

  Raises:
    ImageFolderError: a 32-bit integer or float image whose file states no
      range (or an empty one).
  """
  if image.mode in _SIXTEEN_BIT_MODES:
    return 0.0, 65535.0
  if image.mode not in ("I", "F"):
    return None
  tags = getattr(image, "tag_v2", {})  # TIFF's tags; other formats have none
  low_tag, high_tag = _TIFF_SAMPLE_RANGE_TAGS
  if low_tag not in tags or high_tag not in tags:
    raise ImageFolderError(
        f"{path} holds {'float' if image.mode == 'F' else '32-bit integer'} "
        "pixels without a stated range (TIFF SMinSampleValue and "
        "SMaxSampleValue), so their brightness is unknown: save it as an "
        "8- or 16-bit image, or state the range in those tags.")
  # A tuple of one value per channel; these modes have one channel.
  low, high = float(np.min(tags[low_tag])), float(np.max(tags[high_tag]))
  if not high > low:
    raise ImageFolderError(
        f"{path} states the sample range [{low}, {high}], which is empty: "
        "fix its SMinSampleValue / SMaxSampleValue tags.")
  return low, high


def _to_8_bit(image: PIL.Image.Image, low: float, high: float,
              path: str) -> PIL.Image.Image:
  """Grey `image` with [low, high] mapped linearly to [0, 255] ("L")."""
  pixels = np.asarray(image, dtype=np.float64)
  if not np.isfinite(pixels).all():
    raise ImageFolderError(f"{path} holds NaN or infinite pixels: replace "
                           "them or remove the image.")
  scaled = np.round((pixels - low) * (255.0 / (high - low)))
  return PIL.Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), "L")


def load_image(path: str, size: int) -> np.ndarray:
  """uint8 (size, size, 3): RGB, shorter side resized to `size`, centre crop.

  16-bit, 32-bit and float images are first scaled to 8 bits by their range
  (see the module docstring).

  Raises:
    ImageFolderError: PIL cannot decode the file; a 32-bit or float image
      without a stated range.
  """
  try:
    with PIL.Image.open(path) as image:
      # The range tags live on the opened file, not on a rotated copy.
      sample_range = _sample_range(image, path)
      image = PIL.ImageOps.exif_transpose(image)
      if sample_range is not None:
        image = _to_8_bit(image, *sample_range, path)
      image = PIL.ImageOps.fit(image.convert("RGB"), (size, size),
                               method=PIL.Image.Resampling.BILINEAR)
  except _DECODE_ERRORS as e:
    raise ImageFolderError(f"{path} cannot be read as an image ({e}): "
                           "remove or replace it.") from None
  return np.asarray(image, dtype=np.uint8)
