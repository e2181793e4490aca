r"""MIO on ImageNet-1K with a ViT-S/16 (MoCo v3's ViT recipe), 224 px, 300 epochs.

    python -m mio_jax.main --config=configs/imagenet1k_vit_s16.py --workdir=gs://BUCKET/mio/in1k_vit_s16 \
        --config.dataset.data_dir=gs://BUCKET/tensorflow_datasets

The ImageNet-100 ViT-S/16 recipe (configs/imagenet100_vit_s16.py) on all
1,000 classes for MoCo v3's 300 epochs with its 40 warm-up epochs. For
reference, MoCo v3 (arXiv 2104.02057) reports 73.2 % linear top-1 for
ViT-S/16 after 300 epochs with its own loss (as remembered); no MIO result
with a ViT exists yet. 1.28M images: 1,251 steps/epoch at batch 1024.
Meant for a v4-8, where `python -m mio_jax.cli.tpu_compile
--config=configs/imagenet1k_vit_s16.py --topology=v4-8` compiles it
(its memory and roofline bound are not yet measured on today's code:
that command prints them; docs/performance.md's ViT section has ViT-S/16
on configs/imagenet1k.py's projector).
"""
import pathlib

from mio_jax import config_base


def get_config():
  c = config_base.load_config_file(
      pathlib.Path(__file__).with_name("imagenet100_vit_s16.py"))
  c.dataset.name = "imagenet1k"
  c.batch_size = 1024  # our choice (MoCo v3: 4096); lr scales linearly
  c.num_epochs = 300  # MoCo v3
  c.optimizer.warmup_epochs = 40.0  # MoCo v3
  c.online_eval_every_steps = 12_510  # our choice: every 10 epochs
  c.eval.batch_size = 1024
  return c
