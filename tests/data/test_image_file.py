"""Reading one image of a folder: bit depths scaled to 8 bits by their range
(builders/image_file.py)."""
import numpy as np
import PIL.Image
import pytest

from mio_jax.data.builders import image_file
from mio_jax.data.builders import image_folder_error


def _write_array(path, array, **save_kwargs):
  path.parent.mkdir(parents=True, exist_ok=True)
  PIL.Image.fromarray(array).save(path, **save_kwargs)


def _float_range(low, high):
  """TIFF tags SMinSampleValue / SMaxSampleValue: the stated sample range."""
  return {"tiffinfo": {340: low, 341: high}}


@pytest.mark.parametrize("array, save_kwargs, expected", [
    # 16-bit: 0, mid-grey and white keep their place on the 8-bit scale.
    (np.uint16([[0, 32768], [65535, 32768]]), {}, [[0, 128], [255, 128]]),
    # Float with a stated range: scaled by it (0.5 of [0, 1] is mid-grey).
    (np.float32([[0.0, 0.5], [1.0, 0.5]]), _float_range(0.0, 1.0),
     [[0, 128], [255, 128]]),
    (np.float32([[-1.0, 0.0], [1.0, 0.0]]), _float_range(-1.0, 1.0),
     [[0, 128], [255, 128]]),
])
def test_high_bit_depth_images_are_scaled_to_8_bits_by_their_range(
    tmp_path, array, save_kwargs, expected):
  suffix = ".tif" if array.dtype == np.float32 else ".png"
  path = tmp_path / f"image{suffix}"
  _write_array(path, array, **save_kwargs)
  # Fitting 2x2 pixels to 2x2 leaves them as they are.
  image = image_file.load_image(str(path), 2)
  assert image.shape == (2, 2, 3)
  np.testing.assert_array_equal(image[..., 0], expected)
  np.testing.assert_array_equal(image[..., 1], image[..., 2])


def test_a_float_image_without_a_stated_range_is_refused(tmp_path):
  path = tmp_path / "float.tif"
  _write_array(path, np.full((4, 4), 0.5, np.float32))
  with pytest.raises(image_folder_error.ImageFolderError) as error:
    image_file.load_image(str(path), 4)
  message = str(error.value)
  assert str(path) in message and "range" in message and "\n" not in message
