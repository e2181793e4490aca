"""Walking a user's image folder: which files are its images, and labels.

`list_folder(path)` checks the layout (ROOT/train/<class>/..., optionally
ROOT/test/<class>/...), follows symbolic links wherever it walks (a broken
link or a loop stops with its path), skips hidden names silently and files
that are not images (`image_file.is_image`) with one logged line, and
fingerprints every image's path, size and mtime. It decodes nothing. The
rules as the user reads them: `builders/image_folder.py`'s docstring.
"""
import dataclasses
import hashlib
import os
from typing import Iterator, Mapping, Optional

from absl import logging

from mio_jax.data.builders import image_file
from mio_jax.data.builders.image_folder_error import ImageFolderError

SPLITS = ("train", "test")
# Skipped files named in the one-line report; the rest are counted.
_SKIPPED_NAMES_SHOWN = 3

# (path relative to the root, label)
LabelledFile = tuple[str, int]


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


def _walk(folder: str, root: str, ancestors: frozenset[str] = frozenset()
          ) -> Iterator[tuple[str, bool]]:
  """(path relative to `root`, is an image) of each visible file below
  `folder`: the folder's files sorted, then each sub-folder's in turn.

  Follows links to files and folders.

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
      yield entry.path[start:], image_file.is_image(entry.path)
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
    ImageFolderError: `path` or `path`/train is missing or not a folder;
      `path` is a URL (gs://...): the walk reads local files only.
  """
  if "://" in path:
    # os.path would read a bucket as a missing local folder; a walk that
    # follows symbolic links and reads file times needs a local disk.
    raise ImageFolderError(
        f"{path} is not on a local disk, and image folders are read from "
        "local files: copy it (e.g. gsutil -m cp -r) and set "
        "--config.dataset.path to the copy.")
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
