"""TFDS builders defined by mio_jax; importing this module registers them.

- `digits`: scikit-learn's 8x8 digits, built offline (the CPU demo data).
- `tiny_imagenet`: from the user's `tiny-imagenet-200.zip` (manual_dir).
- `imagenet100`: the CMC ImageNet-100 subset, from the ImageNet-1K archives
  in the user's manual_dir.
- `image_folder`: the user's own folder of class folders, one config per
  folder state and image size (`image_folder.builder_config`).
"""
from mio_jax.data.builders.digits import Digits
from mio_jax.data.builders.image_folder import ImageFolder
from mio_jax.data.builders.image_folder_error import ImageFolderError
from mio_jax.data.builders.imagenet100 import Imagenet100
from mio_jax.data.builders.imagenet100 import imagenet100_class_ids
from mio_jax.data.builders.tiny_imagenet import TinyImagenet

__all__ = ["Digits", "ImageFolder", "ImageFolderError", "Imagenet100",
           "TinyImagenet", "imagenet100_class_ids"]
