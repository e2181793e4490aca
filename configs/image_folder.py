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
eval.linear_batch_size (256) images; lower --config.batch_size and
--config.eval.linear_batch_size for smaller folders. Every other key can be
overridden as for the built-in datasets.
"""
from mio_jax import config_base


def get_config():
  c = config_base.base_config()
  c.dataset.name = "image_folder"
  c.dataset.image_size = 32  # cifar10.py: the cheapest size of the paper

  # Public code at 32 px: RandomResizedCrop(32, (0.8, 1)), flip, jitter
  # s=0.5 p=0.8, grayscale p=0.2; no blur or solarise below 64 px. Flipping
  # is the base default: set --config.augment.hflip=False for images that
  # are not mirror-symmetric (text, digits).
  c.augment.crop_scale = (0.8, 1.0)
  c.augment.color_jitter_strength = 0.5

  c.model.name = "resnet18"  # paper
  c.model.stem = "cifar"  # public code: 3x3 stride-1 conv, no max-pool at 32 px
  c.model.projector_num_layers = 2  # public code
  c.model.projector_hidden_dim = 2048  # public code
  c.model.projector_output_dim = 128  # public code

  c.loss = "mio"
  c.temperature = 0.5  # public code
  c.reg_weight = 0.0  # public code (lambda_loss = 0.0)

  # Public code: LARS lr 1.5 at batch 128 (not scaled), weight decay 1e-6,
  # momentum 0.9, 10 warm-up epochs, then cosine.
  c.optimizer.name = "lars"
  c.optimizer.base_lr = 1.5
  c.optimizer.lr_scaling = "none"
  c.optimizer.warmup_epochs = 10.0
  c.optimizer.weight_decay = 1e-6
  c.optimizer.momentum = 0.9

  c.batch_size = 128  # public code
  c.num_epochs = 200  # paper

  # Our choice: k=20 (DINO's kNN monitor) works from folders of a few
  # hundred images up; the base 200 needs 200 training images.
  c.eval.knn_k = 20
  return c
