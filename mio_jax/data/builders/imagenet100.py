"""ImageNet-100 (the CMC / solo-learn subset) built from ImageNet-1K archives.

Reads the same manual files as TFDS `imagenet2012`
(`ILSVRC2012_img_train.tar`, `ILSVRC2012_img_val.tar` in the manual_dir) and
keeps the 100 classes listed in `imagenet100.txt` (from the CMC repository).
Class sub-archives of the training tar outside the subset are skipped without
being read into memory. Labels are positions of the wnids in sorted order
(the ImageFolder convention of the public code).
"""
import functools
import importlib.resources
import io

from etils import epath
from tensorflow_datasets.datasets.imagenet2012 import (
    imagenet2012_dataset_builder)
from tensorflow_datasets.datasets.imagenet2012 import imagenet_common

from mio_jax.host_tf import tfds

_CLASS_LIST = "imagenet100.txt"
TRAIN_ARCHIVE = "ILSVRC2012_img_train.tar"
VAL_ARCHIVE = "ILSVRC2012_img_val.tar"


@functools.cache
def imagenet100_class_ids() -> tuple[str, ...]:
  """The 100 WordNet ids, in the order of CMC's imagenet100.txt."""
  text = importlib.resources.files("mio_jax.data").joinpath(
      _CLASS_LIST).read_text()
  return tuple(line.strip() for line in text.splitlines()
               if line.strip() and not line.startswith("#"))


class Imagenet100(imagenet2012_dataset_builder.Builder):
  """ImageNet-100: ~126.7k training and 5,000 validation images."""

  name = "imagenet100"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  SUPPORTED_VERSIONS = []
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"Place {TRAIN_ARCHIVE} and {VAL_ARCHIVE} (from image-net.org) in the "
      "manual_dir, as for TFDS imagenet2012.")

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(),
            "label": tfds.features.ClassLabel(
                names=sorted(imagenet100_class_ids())),
            "file_name": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        homepage="https://github.com/HobbitLong/CMC",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    # epath, not os.path: the manual_dir may be a bucket (gs://).
    train_path = epath.Path(dl_manager.manual_dir) / TRAIN_ARCHIVE
    val_path = epath.Path(dl_manager.manual_dir) / VAL_ARCHIVE
    for path in (train_path, val_path):
      if not path.exists():
        raise FileNotFoundError(
            f"{path} not found. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    return {
        "train": self._generate_train(dl_manager.iter_archive(train_path)),
        "validation": self._generate_validation(
            dl_manager.iter_archive(val_path),
            imagenet_common.get_validation_labels(val_path)),
    }

  def _generate_train(self, archive):
    keep = set(imagenet100_class_ids())
    for class_tar_name, class_tar in archive:
      wnid = class_tar_name[:-len(".tar")]
      if wnid not in keep:
        continue
      for image_name, image in tfds.download.iter_archive(
          io.BytesIO(class_tar.read()), tfds.download.ExtractMethod.TAR_STREAM):
        yield image_name, {
            "image": self._fix_image(image_name, image),
            "label": wnid,
            "file_name": image_name,
        }

  def _fix_image(self, image_name: str, image):
    """CMYK and PNG files of the training set -> RGB JPEG, as imagenet2012 5.x.

    (The parent applies this only from its own version 3.0.0 on.)
    """
    if image_name in imagenet2012_dataset_builder.CMYK_IMAGES:
      return io.BytesIO(tfds.core.utils.jpeg_cmyk_to_rgb(image.read()))
    if image_name in imagenet2012_dataset_builder.PNG_IMAGES:
      return io.BytesIO(tfds.core.utils.png_to_jpeg(image.read()))
    return image

  def _generate_validation(self, archive, labels: dict[str, str]):
    keep = set(imagenet100_class_ids())
    for image_name, image in archive:
      if labels[image_name] in keep:
        yield image_name, {
            "image": image,
            "label": labels[image_name],
            "file_name": image_name,
        }
