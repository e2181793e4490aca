"""The tiny model every test config starts from (importable by name).

`tiny_config()` is the base config with resnet_tiny at a quarter width, a
32 -> 16 projector and 8 px images: each of its steps compiles in seconds
on 2 cores. Tests change what they need through the overrides (flat
"section.key" names), or start from another config file (`base`).
"""
from typing import Any, Optional

import ml_collections

from mio_jax import config_base

TINY_MODEL = {
    "model.name": "resnet_tiny",
    "model.width_multiplier": 0.25,
    "model.projector_hidden_dim": 32,
    "model.projector_output_dim": 16,
    "dataset.image_size": 8,
}


def tiny_config(base: Optional[ml_collections.ConfigDict] = None,
                **overrides: Any) -> ml_collections.ConfigDict:
  """`base` (default: the base config) with the tiny model, then `overrides`.

  Overrides are flat config keys: tiny_config(batch_size=16,
  **{"model.width_multiplier": 0.5}).
  """
  config = config_base.base_config() if base is None else base
  config.update_from_flattened_dict({**TINY_MODEL, **overrides})
  return config
