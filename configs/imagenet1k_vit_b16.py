r"""MIO on ImageNet-1K with a ViT-B/16 (MoCo v3's ViT recipe), 224 px, 300 epochs.

    python -m mio_jax.main --config=configs/imagenet1k_vit_b16.py --workdir=gs://BUCKET/mio/in1k_vit_b16 \
        --config.dataset.data_dir=gs://BUCKET/tensorflow_datasets

The ImageNet-1K ViT-S/16 recipe (configs/imagenet1k_vit_s16.py) with the
ViT-B/16 backbone. For reference, MoCo v3 (arXiv 2104.02057) reports
76.7 % linear top-1 for ViT-B/16 after 300 epochs with its own loss (as
remembered); no MIO result with a ViT exists yet. 1.28M images: 1,251
steps/epoch at batch 1024. Meant for a v4-8, where `python -m
mio_jax.cli.tpu_compile --config=configs/imagenet1k_vit_b16.py
--topology=v4-8` compiles it (docs/performance.md lists its memory and
roofline bound). Its first 5 of 12 blocks recompute their activations in
the backward pass (model.remat_blocks): 23.1 instead of 28.2 GiB per chip
for a 4 % lower bound; a slice with less memory per chip takes
--config.model.remat_blocks=12.
"""
import pathlib

from mio_jax import config_base


def get_config():
  c = config_base.load_config_file(
      pathlib.Path(__file__).with_name("imagenet1k_vit_s16.py"))
  c.model.name = "vit_base"
  c.model.remat_blocks = 5
  # Fine-tuning: MAE's ViT-B values.
  c.finetune.layer_decay = 0.65
  c.finetune.drop_path = 0.1
  return c
