"""scikit-learn's 8x8 handwritten digits as a TFDS dataset, built offline.

1,797 real images of 10 classes, shipped inside scikit-learn, so preparing
needs no network. Pixels in [0, 16] are scaled to uint8 [0, 255]; the
pipeline resizes them to `config.dataset.image_size` and replicates the
channel to RGB. The train/test split is fixed and stratified (seed 0).
"""
import numpy as np
from sklearn import datasets as sk_datasets
from sklearn import model_selection

from mio_jax.host_tf import tfds

NUM_TEST_EXAMPLES = 297  # 1,797 = 1,500 train + 297 test
SPLIT_SEED = 0


def digits_uint8() -> tuple[np.ndarray, np.ndarray]:
  """All 1,797 digits: uint8 images (N, 8, 8, 1) in [0, 255], int labels."""
  digits = sk_datasets.load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
  return images[..., None], digits.target.astype(np.int64)


class Digits(tfds.core.GeneratorBasedBuilder):
  """sklearn.datasets.load_digits, fixed stratified 1,500 / 297 split."""

  name = "digits"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 1)),
            "label": tfds.features.ClassLabel(num_classes=10),
            "id": tfds.features.Scalar(dtype=np.int64),  # row in load_digits
        }),
        supervised_keys=("image", "label"),
        homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Nothing to download: the data ships with scikit-learn.
    images, labels = digits_uint8()
    train_ids, test_ids = model_selection.train_test_split(
        np.arange(len(labels)), test_size=NUM_TEST_EXAMPLES,
        random_state=SPLIT_SEED, stratify=labels)
    return {
        "train": self._generate_examples(images, labels, np.sort(train_ids)),
        "test": self._generate_examples(images, labels, np.sort(test_ids)),
    }

  def _generate_examples(self, images: np.ndarray, labels: np.ndarray,
                         ids: np.ndarray):
    for i in ids:
      yield int(i), {"image": images[i], "label": int(labels[i]), "id": int(i)}
