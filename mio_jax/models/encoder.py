"""The encoder MIO pretrains: a backbone (ResNet or ViT) + the MLP projector.

`build_model` picks the backbone family by `config.model.name` (the
registry `FAMILIES`); everything else (the projector, the variables, the
keys) is the same for every backbone.
"""
from typing import Any, Callable, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mio_jax import errors
from mio_jax.models import resnet
from mio_jax.models import vit

Backbone = Union[resnet.ResNet, vit.ViT]
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Backbone family by model name: its variants, its config check and builder.
FAMILIES = {**{name: resnet for name in resnet.BACKBONES},
            **{name: vit for name in vit.VARIANTS}}


class Encoder(nn.Module):
  """Backbone + projector; `__call__` returns (features, projections) in f32."""
  backbone: Backbone
  projector: resnet.Projector

  def __call__(self, images: jnp.ndarray, *,
               train: bool) -> tuple[jnp.ndarray, jnp.ndarray]:
    features = self.backbone(images.astype(self.backbone.dtype), train=train)
    projections = self.projector(features, train=train)
    return features.astype(jnp.float32), projections.astype(jnp.float32)


def check_config(model_config: ml_collections.ConfigDict) -> None:
  """Raises errors.InvalidValueError (key relative to config.model) if bad."""
  errors.check_one_of("name", model_config.name, FAMILIES)
  FAMILIES[model_config.name].check_config(model_config)
  errors.check_positive("projector_num_layers",
                        model_config.projector_num_layers)


def check_image_size(model_config: ml_collections.ConfigDict,
                     image_size: int) -> None:
  """Raises errors.InvalidValueError (key relative to config.model) unless
  the backbone takes images of side `image_size` (ViT: whole patches)."""
  if FAMILIES.get(model_config.name) is vit:
    vit.check_image_size(image_size, model_config.patch_size)


def check_dtype(dtype: str) -> None:
  """Raises errors.InvalidValueError unless `dtype` names a compute dtype."""
  errors.check_one_of("dtype", dtype, DTYPES)


def build_model(model_config: ml_collections.ConfigDict, *,
                dtype: Any = "float32") -> Encoder:
  """The encoder described by `config.model`, computing in `dtype`.

  Parameters are always float32; `dtype` ("float32" | "bfloat16") is the
  compute dtype of convolutions, dense layers, attention and normalisation
  outputs. Raises errors.InvalidValueError for a bad `config.model` or dtype.
  """
  check_config(model_config)
  if isinstance(dtype, str):
    check_dtype(dtype)
    dtype = DTYPES[dtype]
  backbone = FAMILIES[model_config.name].build_backbone(model_config,
                                                        dtype=dtype)
  projector = resnet.Projector(num_layers=model_config.projector_num_layers,
                               hidden_dim=model_config.projector_hidden_dim,
                               output_dim=model_config.projector_output_dim,
                               last_bn=model_config.projector_last_bn,
                               dtype=dtype)
  return Encoder(backbone, projector)


def init_variables(model: Encoder, key: jax.Array, *,
                   image_size: int) -> dict[str, Any]:
  """{"params", "batch_stats"} of a fresh `model`, drawn from `key`.

  batch_stats always has a "backbone" entry, empty for a backbone without
  BatchNorm (a ViT), so every reader of the backbone's statistics finds
  one. Also the restore template of a checkpoint, under `jax.eval_shape`.
  """
  variables = model.init(key, jnp.zeros((2, image_size, image_size, 3)),
                         train=False)
  return {"params": variables["params"],
          "batch_stats": with_backbone_stats(variables.get("batch_stats", {}))}


def with_backbone_stats(batch_stats: Any) -> dict[str, Any]:
  """`batch_stats` of an encoder, with an empty "backbone" entry if it had none.

  Flax leaves out the collection entries of modules without BatchNorm (a
  ViT backbone); the rest of the code reads batch_stats["backbone"].
  """
  return {"backbone": {}, **batch_stats}


def initial_keys(seed: int) -> tuple[jax.Array, jax.Array]:
  """(parameter key, training-state key) of a run seeded by `seed`."""
  params_key, state_key = jax.random.split(jax.random.key(seed))
  return params_key, state_key


def initial_variables(model: Encoder, *, seed: int,
                      image_size: int) -> dict[str, Any]:
  """The encoder variables a run seeded by `seed` starts from.

  Also the random-init baseline every comparison sets MIO against.
  """
  return init_variables(model, initial_keys(seed)[0], image_size=image_size)


def feature_dim(model_config: ml_collections.ConfigDict) -> int:
  """Width of the pooled backbone features (512 for ResNet-18 at width 1)."""
  return build_model(model_config).backbone.feature_dim


def frozen_params(model_config: ml_collections.ConfigDict
                 ) -> Optional[Callable[[Any], Any]]:
  """params -> a tree of bools, True where the optimizer must not update
  (MoCo v3's frozen random patch projection); None when nothing is frozen."""
  if not (FAMILIES.get(model_config.name) is vit
          and model_config.freeze_patch_embedding):
    return None
  return lambda params: jax.tree_util.tree_map_with_path(
      lambda path, _: [k.key for k in path[:2]] == ["backbone",
                                                    "patch_embedding"],
      params)
