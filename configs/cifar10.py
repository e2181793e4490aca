r"""MIO on CIFAR-10: ResNet-18 (CIFAR stem), 200 epochs, linear evaluation.

    python -m mio_jax.main --config=configs/cifar10.py --workdir=gs://BUCKET/mio/cifar10

Paper (arXiv 2111.12664): 86.36 % linear top-1 after 200 epochs. Cost:
390 steps/epoch at batch 128. Compiled for a v4-8 (`python -m
mio_jax.cli.tpu_compile --config=configs/cifar10.py --topology=v4-8`,
docs/performance.md "Compiled for the TPU"): 0.43 GiB per chip; the
roofline bound from the compiler's counts is 23,314 images/s in float32, 7
minutes of chip time for 200 epochs. At 5.5 ms per step, what the bound
leaves out (dispatch, the host loop, the input
pipeline) sets the real time: a bound, not a measurement. Recipe: the public
MIO code (`miossl`, training_and_evaluation_mio.py and model_transforms.py)
unless a comment says otherwise.
"""
from mio_jax import config_base


def get_config():
  c = config_base.base_config()
  c.dataset.name = "cifar10"
  c.dataset.image_size = 32

  # Public code: RandomResizedCrop(32, (0.8, 1)), flip, jitter s=0.5 p=0.8,
  # grayscale p=0.2; no blur or solarise below 64 px.
  c.augment.crop_scale = (0.8, 1.0)
  c.augment.color_jitter_strength = 0.5

  c.model.name = "resnet18"  # paper
  c.model.stem = "cifar"  # public code: 3x3 stride-1 conv, no max-pool at 32 px
  c.model.projector_num_layers = 2  # public code
  c.model.projector_hidden_dim = 2048  # public code
  c.model.projector_output_dim = 128  # public code
  c.model.projector_last_bn = True  # public code

  c.loss = "mio"
  c.temperature = 0.5  # public code
  c.reg_weight = 0.0  # public code (lambda_loss = 0.0)

  # Public code: LARS lr 1.5 at batch 128 (not scaled), weight decay 1e-6
  # with biases and BatchNorm excluded, momentum 0.9, 10 warm-up epochs,
  # then cosine.
  c.optimizer.name = "lars"
  c.optimizer.base_lr = 1.5
  c.optimizer.lr_scaling = "none"
  c.optimizer.warmup_epochs = 10.0
  c.optimizer.weight_decay = 1e-6
  c.optimizer.momentum = 0.9

  c.batch_size = 128  # public code
  c.num_epochs = 200  # paper

  c.checkpoint_every_steps = 2000
  c.log_every_steps = 100
  c.online_eval_every_steps = 10_000  # our choice: kNN every ~25 epochs

  # k = 200 with the base T = 0.07: InstDisc's weighted kNN (Wu et al. 2018;
  # lemniscate.pytorch main.py). Not solo-learn's defaults (solo/utils/knn.py
  # WeightedKNNClassifier: k = 20, T = 0.07) nor lightly's
  # (lightly/utils/benchmarking/knn.py knn_predict: k = 200, T = 0.1).
  c.knn.k = 200
  return c
