r"""MIO on Tiny-ImageNet (200 classes, 64 px): the STL-10 recipe at 64 px.

    python -m mio_jax.main --config=configs/tiny_imagenet.py --workdir=gs://BUCKET/mio/tiny \
        --config.dataset.manual_dir=/path/with/tiny-imagenet-200.zip

Paper (arXiv 2111.12664): 30.87 % linear top-1 after 200 epochs (ResNet-18).
The labelled validation split (10k images) serves as the test set. The
public code treats every size above 32 px alike (ImageNet stem, blur,
solarise), so this is `stl10.py` with another dataset and size.
"""
import pathlib

from mio_jax import config_base


def get_config():
  c = config_base.load_config_file(pathlib.Path(__file__).with_name("stl10.py"))
  c.dataset.name = "tiny_imagenet"
  c.dataset.image_size = 64
  return c
