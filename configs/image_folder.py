r"""MIO on your own folder of images: the CIFAR-10 recipe at 32 px.

    python -m mio_jax.main --config=configs/image_folder.py \
        --config.dataset.path=DIR --workdir=W

DIR holds DIR/train/<class name>/<image> and optionally
DIR/test/<class name>/<image>; without test/, a stratified 10 %
(--config.dataset.test_fraction) of each class is held out as the test set
of the evaluators. Any image PIL reads counts (PNG, JPEG, ..., grey or
colour, any size). The first run prepares the folder into the TFDS data_dir
(--config.dataset.data_dir): each image decoded once, the shorter side
resized to dataset.image_size and centre-cropped, the training mean/std
measured; a changed folder is prepared again.

Why these defaults, for a set of unknown size and content: the public MIO
code's CIFAR-10 recipe (`configs/cifar10.py`, paper arXiv 2111.12664) is
its cheapest validated one: 32 px runs on a laptop CPU, and preparing keeps
3 KB per image. For photos where detail matters, use the public code's
recipe above 32 px (`configs/stl10.py`):

    --config.dataset.image_size=96 --config.model.stem=imagenet \
    --config.augment.blur_prob=0.5 --config.augment.solarize_prob=0.2

The training split must hold at least batch_size (128) and
feature_probe.batch_size (256) images; lower --config.batch_size and
--config.feature_probe.batch_size for smaller folders. Every other key can be
overridden as for the built-in datasets.
"""
import pathlib

from mio_jax import config_base


def get_config():
  # The CIFAR-10 recipe, each value's source commented there.
  c = config_base.load_config_file(pathlib.Path(__file__).with_name("cifar10.py"))
  c.dataset.name = "image_folder"
  # Flipping stays on (the recipe's): set --config.augment.hflip=False for
  # images that are not mirror-symmetric (text, digits).

  # Ours: no online kNN by default (CIFAR-10's every 10,000 steps assumes
  # its size; the online probe still reports accuracy every log step).
  c.online_eval_every_steps = 0
  # Our choice: k=20 (solo-learn's WeightedKNNClassifier default; DINO's
  # eval_knn.py finds 20 "usually working the best") works from folders of a
  # few hundred images up; the base 200 needs 200 training images.
  c.knn.k = 20
  return c
