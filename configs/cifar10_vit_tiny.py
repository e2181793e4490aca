r"""MIO on CIFAR-10 with a ViT-Ti (patches of 4 px: 64 tokens), 200 epochs.

    python -m mio_jax.main --config=configs/cifar10_vit_tiny.py --workdir=gs://BUCKET/mio/cifar10_vit_tiny

The CIFAR-10 ResNet-18 config (configs/cifar10.py: data, augmentation,
loss, evaluation) with a ViT-Ti/4 and MoCo v3's ViT recipe: fixed 2-D
sin-cos position embedding, class token, 3-layer projector with
BatchNorm (4096 hidden, 256 out), AdamW with weight decay 0.1 off norms,
biases and embeddings, warm-up then cosine. The patch projection trains
(at 4 px it is 48 inputs wide; MoCo v3 froze 16 px patches). No MIO
result with a ViT exists yet; ViTs want more data than CIFAR-10's 50k
images, so expect less than the ResNet-18. 97 steps/epoch at batch 512.
Meant for a v4-8, where `python -m mio_jax.cli.tpu_compile
--config=configs/cifar10_vit_tiny.py --topology=v4-8` compiles it
(its memory and roofline bound are not yet measured on today's code:
that command prints them).
"""
import pathlib

from mio_jax import config_base


def get_config():
  c = config_base.load_config_file(pathlib.Path(__file__).with_name("cifar10.py"))

  c.model.name = "vit_tiny"
  c.model.patch_size = 4  # 8 x 8 patches of a 32 px image
  c.model.posemb = "sincos2d"  # MoCo v3
  c.model.pool = "token"  # MoCo v3
  c.model.projector_num_layers = 3  # MoCo v3
  c.model.projector_hidden_dim = 4096  # MoCo v3
  c.model.projector_output_dim = 256  # MoCo v3

  c.optimizer.name = "adamw"  # MoCo v3, DINO
  c.optimizer.base_lr = 1.5e-4  # MoCo v3: 1.5e-4 x batch / 256
  c.optimizer.lr_scaling = "linear"
  c.optimizer.weight_decay = 0.1  # MoCo v3
  c.optimizer.warmup_epochs = 20.0  # our choice

  c.dtype = "bfloat16"  # our choice: TPU-native compute; loss and params in float32
  c.batch_size = 512  # our choice
  c.num_epochs = 200  # as configs/cifar10.py

  c.finetune.layer_decay = 0.75  # our choice
  c.finetune.drop_path = 0.1  # our choice
  return c
