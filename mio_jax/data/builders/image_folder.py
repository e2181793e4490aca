"""A user's folder of images as a TFDS dataset, prepared offline on first use.

Layout (`ROOT` is `config.dataset.path`):

    ROOT/train/<class>/<image>   training images, one folder per class
    ROOT/test/<class>/<image>    optional; without it a stratified hold-out
                                 of `test_fraction` of each class is the test

Images may also sit in sub-folders of a class folder. A file is an image
when its extension is one PIL reads (.png, .jpg, .tif, .webp, ...; any case)
or, for any other name, when PIL recognises its contents (a scan saved
without an extension). Other files (Thumbs.db, README, notes.txt) are
skipped and counted in one logged line; a class folder with no image stops
with its path, and so does a file named as an image that PIL cannot decode
(a damaged image is not dropped silently). Names starting with "."
(.DS_Store, .ipynb_checkpoints) are hidden: skipped without a word.
Labels are the positions of the class folder names in sorted order; the
names are kept as the ClassLabel names.

Symbolic links are followed wherever the folder is walked: the root, train/
and test/, class folders, sub-folders and files may each be a link, and
count as what they point to (under their own path). A broken link, or a
link to a folder that contains it (a loop), stops with its path.

Preparing decodes every image once: EXIF-rotated, scaled to 8 bits, converted
to RGB, the shorter side resized to `image_size` (bilinear, antialiased, as
the pipeline resizes digits) and centre-cropped to a square, so that the
split fits the in-memory pipeline and aspect ratios are kept. 8-bit images
(grey, palette, RGB, RGBA, CMYK) keep their values; 16-bit grey ones (PNG,
TIFF) are divided by 257 (65535 -> 255); 32-bit integer and float ones are
scaled by the sample range their file states (TIFF SMinSampleValue /
SMaxSampleValue) and refused without one, as no convention (0-1, 0-255,
sensor units) can be assumed. The per-channel mean and std of the training
pixels (in [0, 1]) are stored in the dataset's metadata.json ("mean",
"std").

Each prepared copy is stored under the config name
`<folder name>_<image_size>px_<fingerprint>`, where the fingerprint hashes
every file's path, size and mtime (and the hold-out fraction when it
applies). A changed folder therefore gets a new name and is prepared again;
a stale copy is never read (old copies stay on disk until deleted).
"""
# The docstring above is also the dataset's TFDS description (`_info`). The
# rules it states live in folder_listing (which files, links), image_file
# (bit depth, decoding) and hold_out_split (the hold-out); this module turns
# their result into a builder config and the TFDS builder.
import concurrent.futures
import dataclasses
import hashlib
import os
import re
from typing import Mapping, Optional

import numpy as np

from mio_jax.data.builders import folder_listing
from mio_jax.data.builders import hold_out_split
from mio_jax.data.builders import image_file
from mio_jax.data.builders.folder_listing import LabelledFile
from mio_jax.host_tf import tfds

# Decoding is mostly PIL C code, which releases the GIL.
_DECODE_THREADS = min(32, os.cpu_count() or 1)


@dataclasses.dataclass(eq=False)
class ImageFolderConfig(tfds.core.BuilderConfig):
  """One prepared version of a folder at one image size."""
  root: str = ""
  image_size: int = 0
  class_names: tuple[str, ...] = ()
  # The files of each split; kept out of the repr TFDS logs.
  split_files: Mapping[str, tuple[LabelledFile, ...]] = dataclasses.field(
      default_factory=dict, repr=False)


def _config_name(listing: folder_listing.FolderListing, image_size: int,
                 test_fraction: Optional[float]) -> str:
  digest = hashlib.sha256(listing.fingerprint.encode())
  digest.update(f"{image_size}\t{test_fraction}".encode())
  folder = re.sub(r"\W", "_", os.path.basename(listing.root)) or "root"
  return f"{folder}_{image_size}px_{digest.hexdigest()[:16]}"


def builder_config(path: str, *, image_size: int,
                   test_fraction: float) -> ImageFolderConfig:
  """The config of `path` as it is now (listed, checked, split).

  Args:
    path: the folder (see the module docstring).
    image_size: side of the stored square images.
    test_fraction: share of each class held out as the test split when
      `path` has no test/ folder, in (0, 1).

  Raises:
    ImageFolderError: see `folder_listing.list_folder` and
      `hold_out_split.hold_out`.
  """
  listing = folder_listing.list_folder(path)
  if listing.files["test"] is None:
    split_files = hold_out_split.hold_out(
        listing.files["train"], test_fraction=test_fraction,
        root=listing.root)
  else:
    split_files, test_fraction = dict(listing.files), None
  return ImageFolderConfig(
      name=_config_name(listing, image_size, test_fraction),
      description=f"{listing.root} at {image_size} px",
      root=listing.root, image_size=image_size,
      class_names=listing.class_names, split_files=split_files)


def channel_mean_std(images: np.ndarray) -> tuple[list[float], list[float]]:
  """Per-channel mean and std of uint8 images (N, H, W, 3) scaled to [0, 1]."""
  sums = np.zeros(3)
  squares = np.zeros(3)
  for image in images:  # one image at a time: no float copy of the split
    pixels = image.reshape(-1, 3).astype(np.float64) / 255.0
    sums += pixels.sum(axis=0)
    squares += np.square(pixels).sum(axis=0)
  count = images.shape[0] * images.shape[1] * images.shape[2]
  mean = sums / count
  std = np.sqrt(np.maximum(squares / count - np.square(mean), 0.0))
  return mean.tolist(), std.tolist()


class ImageFolder(tfds.core.GeneratorBasedBuilder):
  """A folder of class folders; built with `config=builder_config(...)`."""

  name = "image_folder"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(size, size, 3)),
            "label": tfds.features.ClassLabel(
                names=self.builder_config.class_names),
            "file_name": tfds.features.Text(),  # relative to the root
        }),
        supervised_keys=("image", "label"),
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Nothing to download: the images are on disk.
    config = self.builder_config
    # Decoding everything first finds an unreadable image before any file
    # is written and gives the training statistics in one pass.
    images = {split: self._decode(files)
              for split, files in config.split_files.items()}
    mean, std = channel_mean_std(images["train"])
    self.info.metadata.update(mean=mean, std=std)
    return {split: self._generate_examples(config.split_files[split],
                                           images[split])
            for split in folder_listing.SPLITS}

  def _decode(self, files: tuple[LabelledFile, ...]) -> np.ndarray:
    config = self.builder_config
    paths = [os.path.join(config.root, name) for name, _ in files]
    with concurrent.futures.ThreadPoolExecutor(_DECODE_THREADS) as pool:
      decoded = list(pool.map(
          lambda p: image_file.load_image(p, config.image_size), paths))
    return np.stack(decoded)

  def _generate_examples(self, files: tuple[LabelledFile, ...],
                         images: np.ndarray):
    for (name, label), image in zip(files, images):
      yield name, {"image": image, "label": label, "file_name": name}
