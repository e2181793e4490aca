r"""MIO on ImageNet-1K: the ImageNet-100 recipe on all 1,000 classes, 100 epochs.

    python -m mio_jax.main --config=configs/imagenet1k.py --workdir=gs://BUCKET/mio/in1k \
        --config.dataset.data_dir=gs://BUCKET/tensorflow_datasets

Paper (arXiv 2111.12664): 65.22 % linear top-1 after 100 epochs (ResNet-50).
1.28M images: 1,251 steps/epoch at batch 1024. Compiled ahead of time
(`python -m mio_jax.cli.tpu_compile --config=configs/imagenet1k.py
--topology=v4-8`, docs/performance.md "Compiled for the TPU"): it fits a
v4-8 (18.66 of 30.75 GiB per chip); the roofline bound from the compiler's
counts (HBM bytes, not FLOPs, bound it) is at most 8,151 images/s: no less
than 4.4 hours, 17.5 chip-hours, for 100 epochs. A bound, not a
measurement. Its HBM bytes and peak memory per chip are guarded by the TPU
budget (benchmarks/tpu_budget.json, `make tpu-budget`).
"""
import pathlib

from mio_jax import config_base


def get_config():
  c = config_base.load_config_file(pathlib.Path(__file__).with_name("imagenet100.py"))
  c.dataset.name = "imagenet1k"
  c.batch_size = 1024  # our choice: SimCLR scales to 4096; lr scales linearly
  c.num_epochs = 100  # paper
  c.online_eval_every_steps = 12_510  # our choice: every 10 epochs
  c.eval.batch_size = 1024
  return c
