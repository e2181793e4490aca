"""Tiny ImageNet (200 classes, 64x64) from the user's tiny-imagenet-200.zip.

TFDS has no builder for it and the archive cannot be downloaded here, so the
user places the standard `tiny-imagenet-200.zip` (from
http://cs231n.stanford.edu/tiny-imagenet-200.zip) in the manual_dir. The
archive holds `wnids.txt` (200 WordNet ids), `train/<wnid>/images/*.JPEG`
(500 per class) and `val/images/*.JPEG` labelled by
`val/val_annotations.txt`; its test split has no labels and is skipped.
Labels are the positions of the wnids in sorted order; `wnid` keeps the id.
"""
import zipfile

from etils import epath

from mio_jax.host_tf import tfds

ARCHIVE_NAME = "tiny-imagenet-200.zip"
_ROOT = "tiny-imagenet-200"
NUM_CLASSES = 200


class TinyImagenet(tfds.core.GeneratorBasedBuilder):
  """Tiny ImageNet train (100,000) and validation (10,000) splits."""

  name = "tiny_imagenet"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"Place {ARCHIVE_NAME} (http://cs231n.stanford.edu/{ARCHIVE_NAME}) in "
      "the manual_dir.")

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            # Some JPEGs are grayscale; decoding to 3 channels fixes that.
            "image": tfds.features.Image(shape=(64, 64, 3)),
            "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
            "wnid": tfds.features.Text(),
            "file_name": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        homepage="http://cs231n.stanford.edu/",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    archive = epath.Path(dl_manager.manual_dir) / ARCHIVE_NAME
    if not archive.exists():
      raise FileNotFoundError(
          f"{archive} not found. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    return {
        "train": self._generate_examples(archive, "train"),
        "validation": self._generate_examples(archive, "val"),
    }

  def _generate_examples(self, archive: epath.Path, split_dir: str):
    with archive.open("rb") as f, zipfile.ZipFile(f) as zf:
      wnids = sorted(zf.read(f"{_ROOT}/wnids.txt").decode().split())
      if len(wnids) != NUM_CLASSES:
        raise ValueError(f"{archive}: wnids.txt lists {len(wnids)} classes, "
                         f"expected {NUM_CLASSES}.")
      label_of = {wnid: i for i, wnid in enumerate(wnids)}
      if split_dir == "val":
        annotations = zf.read(f"{_ROOT}/val/val_annotations.txt").decode()
        wnid_of_file = dict(
            line.split("\t")[:2] for line in annotations.splitlines() if line)
      for name in sorted(zf.namelist()):
        parts = name.split("/")
        if not (name.startswith(f"{_ROOT}/{split_dir}/")
                and name.endswith(".JPEG")):
          continue
        file_name = parts[-1]
        # train/<wnid>/images/<file>; val/images/<file> labelled by annotations.
        wnid = parts[2] if split_dir == "train" else wnid_of_file[file_name]
        yield file_name, {
            "image": zf.read(name),
            "label": label_of[wnid],
            "wnid": wnid,
            "file_name": file_name,
        }
