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
import concurrent.futures
import dataclasses
import hashlib
import os
import re
from typing import Iterator, Mapping, Optional

import numpy as np
import PIL.Image
import PIL.ImageFile
import PIL.ImageOps
import tensorflow_datasets as tfds
from absl import logging
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
# Skipped files named in the one-line report; the rest are counted.
_SKIPPED_NAMES_SHOWN = 3

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
  fingerprint: str  # sha256 of every image's relative path, size and mtime
  skipped: tuple[str, ...] = ()  # files that are not images, relative


def _visible(name: str) -> bool:
  return not name.startswith(".")


def _check_link(path: str) -> None:
  """Raises ImageFolderError if `path` is a symbolic link to nothing."""
  if os.path.islink(path) and not os.path.exists(path):
    raise ImageFolderError(
        f"{path} is a broken symbolic link (to {os.readlink(path)}): point it "
        "at an existing file or folder, or remove it.")


def _visible_entries(folder: str) -> list[os.DirEntry]:
  """The visible entries of `folder`, sorted by name; links checked.

  DirEntry.is_dir() follows links, so a link to a folder is a folder.
  """
  with os.scandir(folder) as entries:
    visible = sorted((e for e in entries if _visible(e.name)),
                     key=lambda e: e.name)
  for entry in visible:
    _check_link(entry.path)
  return visible


def _is_image(path: str) -> bool:
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


def _walk(folder: str, root: str, ancestors: frozenset[str] = frozenset()
          ) -> Iterator[tuple[str, bool]]:
  """(path relative to `root`, is an image) of each visible file below
  `folder`: the folder's files sorted, then each sub-folder's in turn.

  Follows links to files and folders (see the module docstring).

  Raises:
    ImageFolderError: a broken link, or a folder reached again through a
      link below itself (it would be walked forever).
  """
  real = os.path.realpath(folder)
  if real in ancestors:
    raise ImageFolderError(
        f"{folder} leads back to {real}, which contains it, through a "
        "symbolic link (a loop): remove the link or point it elsewhere.")
  ancestors |= {real}
  start = len(os.path.join(root, ""))  # folder is below root
  entries = _visible_entries(folder)
  for entry in entries:
    if not entry.is_dir():
      yield entry.path[start:], _is_image(entry.path)
  for entry in entries:
    if entry.is_dir():
      yield from _walk(entry.path, root, ancestors)


def _list_split(split_dir: str, root: str,
                class_names: Optional[tuple[str, ...]]
                ) -> tuple[tuple[str, ...], tuple[LabelledFile, ...],
                           list[str]]:
  """(class names, labelled images, skipped files) of ROOT/<split>; checks
  the layout.

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
  files, skipped = [], []
  for name in folders:
    class_dir = os.path.join(split_dir, name)
    if name not in label_of:
      raise ImageFolderError(
          f"{class_dir} is a class the training images do not have: add "
          f"{os.path.join(root, 'train', name)}/ or remove {class_dir}.")
    walked = list(_walk(class_dir, root))
    images = [path for path, is_image in walked if is_image]
    if not images:
      others = (f" (only {len(walked)} files that are not images)" if walked
                else "")
      raise ImageFolderError(
          f"{class_dir} holds no images{others}: add some or remove the "
          "folder.")
    files.extend((path, label_of[name]) for path in images)
    skipped.extend(path for path, is_image in walked if not is_image)
  return class_names, tuple(files), skipped


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
  _check_link(root)
  if not os.path.isdir(root):
    what = "is not a folder" if os.path.exists(root) else "does not exist"
    raise ImageFolderError(
        f"{root} {what}: set --config.dataset.path to a folder holding "
        "train/<class name>/<image>.")
  train_dir = os.path.join(root, "train")
  _check_link(train_dir)
  if not os.path.isdir(train_dir):
    raise ImageFolderError(
        f"{root} has no train/ folder: put the training images in "
        f"{train_dir}/<class name>/<image> (and optionally test images in "
        f"{os.path.join(root, 'test')}/<class name>/<image>).")
  return root


def list_folder(path: str) -> FolderListing:
  """Lists and checks `path` (see the module docstring); decodes nothing.

  Logs one line naming the skipped files that are not images, if any.

  Raises:
    ImageFolderError: see `check_root`; a split without class folders or
      with a class folder without images, fewer than 2 classes, a file
      outside a class folder, a test class without training images, a
      broken symbolic link or a link loop.
  """
  root = check_root(path)
  class_names, train, skipped = _list_split(os.path.join(root, "train"),
                                            root, None)
  test = None
  test_dir = os.path.join(root, "test")
  _check_link(test_dir)
  if os.path.exists(test_dir):
    if not os.path.isdir(test_dir):
      raise ImageFolderError(f"{test_dir} is not a folder: remove it or make "
                             "it a folder of class folders.")
    _, test, skipped_in_test = _list_split(test_dir, root, class_names)
    skipped += skipped_in_test
    if not test:
      raise ImageFolderError(
          f"{test_dir} holds no class folders: put the test images in "
          f"{test_dir}/<class name>/<image>, or remove it to hold out part "
          "of the training images.")
  if skipped:
    shown = ", ".join(skipped[:_SKIPPED_NAMES_SHOWN])
    more = ", ..." if len(skipped) > _SKIPPED_NAMES_SHOWN else ""
    what = ("1 file that is not an image" if len(skipped) == 1 else
            f"{len(skipped)} files that are not images")
    logging.warning("%s: skipped %s (%s%s).", root, what, shown, more)
  files = {"train": train, "test": test}
  return FolderListing(root=root, class_names=class_names, files=files,
                       fingerprint=_fingerprint(root, files),
                       skipped=tuple(skipped))


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
