"""A user's folder of images as a TFDS dataset, prepared offline on first use.

Layout (`ROOT` is `config.dataset.path`):

    ROOT/train/<class>/<image>   training images, one folder per class
    ROOT/test/<class>/<image>    optional; without it a stratified hold-out
                                 of `test_fraction` of each class is the test

Any file PIL decodes counts (PNG, JPEG, GIF, BMP, TIFF, WebP; grey, palette,
RGB or RGBA; any size), also in sub-folders of a class folder; names starting
with "." (.DS_Store, .ipynb_checkpoints) are skipped. Labels are the
positions of the class folder names in sorted order; the names are kept as
the ClassLabel names.

Preparing decodes every image once: EXIF-rotated, converted to RGB, the
shorter side resized to `image_size` (bilinear, antialiased, as the
pipeline resizes digits) and centre-cropped to a square, so that the split
fits the in-memory pipeline and aspect ratios are kept. The per-channel
mean and std of the training pixels (in [0, 1]) are stored in the dataset's
metadata.json ("mean", "std").

Each prepared copy is stored under the config name
`<folder name>_<image_size>px_<fingerprint>`, where the fingerprint hashes
every file's path, size and mtime (and the hold-out fraction when it
applies). A changed folder therefore gets a new name and is prepared again;
a stale copy is never read (old copies stay on disk until deleted).
"""
import concurrent.futures
import dataclasses
import hashlib
import os
import re
from typing import Iterator, Mapping, Optional

import numpy as np
import PIL.Image
import PIL.ImageOps
import tensorflow_datasets as tfds
from sklearn import model_selection

from mio_jax import errors

SPLITS = ("train", "test")
HOLD_OUT_SEED = 0  # the stratified hold-out is the same on every call
# Decoding is mostly PIL C code, which releases the GIL.
_DECODE_THREADS = min(32, os.cpu_count() or 1)
# What PIL raises for a file it cannot decode (truncated, not an image,
# over its decompression-bomb limit).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError,
                  PIL.Image.DecompressionBombError)

# (path relative to the root, label)
LabelledFile = tuple[str, int]


class ImageFolderError(errors.UserError):
  """A folder of images that cannot be a dataset; names the path and fix."""


@dataclasses.dataclass(frozen=True)
class FolderListing:
  """The checked (not yet decoded) contents of an image folder.

  files["test"] is None when the folder has no test/ sub-folder.
  """
  root: str  # absolute
  class_names: tuple[str, ...]  # label i is class_names[i]
  files: Mapping[str, Optional[tuple[LabelledFile, ...]]]
  fingerprint: str  # sha256 of every file's relative path, size and mtime


def _visible(name: str) -> bool:
  return not name.startswith(".")


def _visible_entries(folder: str) -> list[os.DirEntry]:
  with os.scandir(folder) as entries:
    return sorted((e for e in entries if _visible(e.name)),
                  key=lambda e: e.name)


def _files_under(folder: str, root: str) -> Iterator[str]:
  """Paths relative to `root` of the visible files below `folder`, sorted."""
  start = len(os.path.join(root, ""))  # folder is below root
  for parent, dirs, names in os.walk(folder):
    dirs[:] = sorted(d for d in dirs if _visible(d))
    for name in sorted(filter(_visible, names)):
      yield os.path.join(parent, name)[start:]


def _list_split(split_dir: str, root: str,
                class_names: Optional[tuple[str, ...]]
                ) -> tuple[tuple[str, ...], tuple[LabelledFile, ...]]:
  """(class names, labelled files) of ROOT/<split>; checks the layout.

  `class_names` None: the split defines the classes (train); else every
  class folder must be one of them (test).
  """
  entries = _visible_entries(split_dir)
  loose = [e.path for e in entries if not e.is_dir()]
  if loose:
    raise ImageFolderError(
        f"{loose[0]} is not inside a class folder: move the images of "
        f"{split_dir} into {split_dir}/<class name>/.")
  folders = [e.name for e in entries]
  if class_names is None:
    class_names = tuple(folders)
    if not class_names:
      raise ImageFolderError(
          f"{split_dir} holds no class folders: put the images in "
          f"{split_dir}/<class name>/<image>.")
    if len(class_names) < 2:
      raise ImageFolderError(
          f"{split_dir} holds a single class folder ({class_names[0]}); "
          "the evaluators need at least 2 classes: add a second class "
          f"folder to {split_dir}.")
  label_of = {name: i for i, name in enumerate(class_names)}
  files = []
  for name in folders:
    class_dir = os.path.join(split_dir, name)
    if name not in label_of:
      raise ImageFolderError(
          f"{class_dir} is a class the training images do not have: add "
          f"{os.path.join(root, 'train', name)}/ or remove {class_dir}.")
    paths = list(_files_under(class_dir, root))
    if not paths:
      raise ImageFolderError(
          f"{class_dir} holds no images: add some or remove the folder.")
    files.extend((path, label_of[name]) for path in paths)
  return class_names, tuple(files)


def _fingerprint(root: str, files: Mapping[str, Optional[tuple]]) -> str:
  digest = hashlib.sha256()
  for split in SPLITS:
    for relative_path, label in files[split] or ():
      stat = os.stat(os.path.join(root, relative_path))
      digest.update(f"{relative_path}\t{label}\t{stat.st_size}\t"
                    f"{stat.st_mtime_ns}\n".encode())
  return digest.hexdigest()


def check_root(path: str) -> str:
  """The absolute path of `path`, a folder with a train/ folder (cheap).

  Raises:
    ImageFolderError: `path` or `path`/train is missing or not a folder.
  """
  root = os.path.abspath(os.path.expanduser(path))
  if not os.path.isdir(root):
    what = "is not a folder" if os.path.exists(root) else "does not exist"
    raise ImageFolderError(
        f"{root} {what}: set --config.dataset.path to a folder holding "
        "train/<class name>/<image>.")
  train_dir = os.path.join(root, "train")
  if not os.path.isdir(train_dir):
    raise ImageFolderError(
        f"{root} has no train/ folder: put the training images in "
        f"{train_dir}/<class name>/<image> (and optionally test images in "
        f"{os.path.join(root, 'test')}/<class name>/<image>).")
  return root


def list_folder(path: str) -> FolderListing:
  """Lists and checks `path` (see the module docstring); decodes nothing.

  Raises:
    ImageFolderError: see `check_root`; a split without class folders or
      with an empty class folder, fewer than 2 classes, a file outside a
      class folder, a test class without training images.
  """
  root = check_root(path)
  class_names, train = _list_split(os.path.join(root, "train"), root, None)
  test = None
  test_dir = os.path.join(root, "test")
  if os.path.exists(test_dir):
    if not os.path.isdir(test_dir):
      raise ImageFolderError(f"{test_dir} is not a folder: remove it or make "
                             "it a folder of class folders.")
    _, test = _list_split(test_dir, root, class_names)
    if not test:
      raise ImageFolderError(
          f"{test_dir} holds no class folders: put the test images in "
          f"{test_dir}/<class name>/<image>, or remove it to hold out part "
          "of the training images.")
  files = {"train": train, "test": test}
  return FolderListing(root=root, class_names=class_names, files=files,
                       fingerprint=_fingerprint(root, files))


def hold_out(files: tuple[LabelledFile, ...], *, test_fraction: float,
             root: str) -> dict[str, tuple[LabelledFile, ...]]:
  """{"train", "test"}: a stratified split, the same on every call.

  Raises:
    ImageFolderError: a class too small for the split (fewer than 2 images,
      or fewer test images than classes).
  """
  labels = [label for _, label in files]
  try:
    train, test = model_selection.train_test_split(
        list(files), test_size=test_fraction, random_state=HOLD_OUT_SEED,
        stratify=labels)
  except ValueError as e:
    train_dir = os.path.join(root, "train")
    raise ImageFolderError(
        f"{train_dir} cannot be split by class into {1 - test_fraction:.0%} "
        f"train / {test_fraction:.0%} test ({e}): add images, change "
        "--config.dataset.test_fraction, or put test images in "
        f"{os.path.join(root, 'test')}/<class name>/.") from None
  # Back to folder order: the split decides membership, not order.
  return {"train": tuple(sorted(map(tuple, train))),
          "test": tuple(sorted(map(tuple, test)))}


@dataclasses.dataclass(eq=False)
class ImageFolderConfig(tfds.core.BuilderConfig):
  """One prepared version of a folder at one image size."""
  root: str = ""
  image_size: int = 0
  class_names: tuple[str, ...] = ()
  # The files of each split; kept out of the repr TFDS logs.
  split_files: Mapping[str, tuple[LabelledFile, ...]] = dataclasses.field(
      default_factory=dict, repr=False)


def _config_name(listing: FolderListing, image_size: int,
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
    ImageFolderError: see `list_folder` and `hold_out`.
  """
  listing = list_folder(path)
  if listing.files["test"] is None:
    split_files = hold_out(listing.files["train"], test_fraction=test_fraction,
                           root=listing.root)
  else:
    split_files, test_fraction = dict(listing.files), None
  return ImageFolderConfig(
      name=_config_name(listing, image_size, test_fraction),
      description=f"{listing.root} at {image_size} px",
      root=listing.root, image_size=image_size,
      class_names=listing.class_names, split_files=split_files)


def load_image(path: str, size: int) -> np.ndarray:
  """uint8 (size, size, 3): RGB, shorter side resized to `size`, centre crop.

  Raises:
    ImageFolderError: PIL cannot decode the file.
  """
  try:
    with PIL.Image.open(path) as image:
      image = PIL.ImageOps.exif_transpose(image).convert("RGB")
      image = PIL.ImageOps.fit(image, (size, size),
                               method=PIL.Image.Resampling.BILINEAR)
  except _DECODE_ERRORS as e:
    raise ImageFolderError(f"{path} cannot be read as an image ({e}): "
                           "remove or replace it.") from None
  return np.asarray(image, dtype=np.uint8)


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
            for split in SPLITS}

  def _decode(self, files: tuple[LabelledFile, ...]) -> np.ndarray:
    config = self.builder_config
    paths = [os.path.join(config.root, name) for name, _ in files]
    with concurrent.futures.ThreadPoolExecutor(_DECODE_THREADS) as pool:
      decoded = list(pool.map(lambda p: load_image(p, config.image_size),
                              paths))
    return np.stack(decoded)

  def _generate_examples(self, files: tuple[LabelledFile, ...],
                         images: np.ndarray):
    for (name, label), image in zip(files, images):
      yield name, {"image": image, "label": label, "file_name": name}
