r"""The CPU default: a small ResNet-18 on scikit-learn's 8x8 digits, no download.

    python -m mio_jax.main --config=configs/digits.py --workdir=runs/digits

1,797 real images (train 1,500 / test 297), upsampled to 32 px. The
augmentation suits digits (no flip: digits are not mirror-symmetric).
"""
from mio_jax import config_base


def get_config():
  c = config_base.base_config()
  c.dataset.name = "digits"
  c.dataset.image_size = 32

  c.augment.crop_scale = (0.5, 1.0)
  c.augment.hflip = False
  c.augment.color_jitter_strength = 0.5
  c.augment.grayscale_prob = 0.0
  c.augment.rotation_degrees = 15.0
  c.augment.translate_pixels = 3
  c.augment.gaussian_noise_std = 0.05

  # A quarter-width ResNet-18 (16/32/64/128 channels, 0.7M parameters).
  c.model.name = "resnet18"
  c.model.stem = "cifar"
  c.model.width_multiplier = 0.25
  c.model.projector_hidden_dim = 512
  c.model.projector_output_dim = 128

  c.loss = "mio"
  c.temperature = 0.5

  # AdamW suits the small batch and short run better than LARS.
  c.optimizer.name = "adamw"
  c.optimizer.base_lr = 2e-3
  c.optimizer.lr_scaling = "none"
  c.optimizer.warmup_epochs = 1.0
  c.optimizer.weight_decay = 1e-4

  c.batch_size = 256  # divisible by 1, 2, 4 and 8 devices; 5 steps per epoch
  c.num_epochs = 12

  c.checkpoint_every_steps = 25
  c.log_every_steps = 5

  c.eval.batch_size = 304  # divisible by 8 and 16
  # solo-learn's WeightedKNNClassifier default k (solo/utils/knn.py), with
  # the base T = 0.07 as there; the train split has 150 images per class,
  # fewer than the base k = 200.
  c.knn.k = 20
  c.feature_probe.epochs = 100
  c.feature_probe.batch_size = 256

  # Augmented linear evaluation and fine-tuning: the crop scale of this
  # config's pretraining views (the digits probe in STACK_NOTES: (0.5, 1)
  # keeps a digit recognisable at 8x8 source pixels; Inception's 0.08 would
  # crop most of it away). No flip (augment.hflip above).
  c.linear_eval.crop_scale = (0.5, 1.0)
  c.linear_eval.batch_size = 256  # 5 steps per epoch of the 1,500 images
  c.finetune.crop_scale = (0.5, 1.0)
  # 10% of the labels is 150 images: batch 48 (divisible by 8 devices) gives
  # 3 steps per epoch; SimCLR's 4096 is larger than the data set.
  c.finetune.batch_size = 48
  return c
