"""The hold-out test split of an image folder that has no test/ folder.

A stratified share of each class, drawn with a fixed seed: the same files
on every call, so the prepared copy's name (its fingerprint) is stable.
"""
import os

from sklearn import model_selection

from mio_jax.data.builders.folder_listing import LabelledFile
from mio_jax.data.builders.image_folder_error import ImageFolderError

HOLD_OUT_SEED = 0  # the stratified hold-out is the same on every call


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
