"""Encoders for self-supervised pretraining: ResNet or ViT backbones + MLP projector.

Written with Flax Linen rather than NNX. Linen modules are pure functions of
explicit variables (`params`, `batch_stats`), which is exactly what a
jitted, sharded, donated train step and Orbax checkpoints want: the state is
a plain pytree. With NNX, splitting the model and taking `jax.value_and_grad`
inside a plain `jax.jit` raised "Cannot mutate BatchStat from a different
trace level" on flax 0.12.8 (see STACK_NOTES), and both APIs ran a ResNet-18
step at the same speed, so nothing is lost.
"""
from mio_jax.models.encoder import (DTYPES, FAMILIES, Backbone, Encoder,
                                    build_model, check_config, check_dtype,
                                    check_image_size, feature_dim,
                                    frozen_params, init_variables,
                                    initial_keys, initial_variables,
                                    with_backbone_stats)
from mio_jax.models.resnet import BACKBONES, STEMS, Projector, ResNet
from mio_jax.models.vit import VARIANTS, ViT

__all__ = ["BACKBONES", "DTYPES", "FAMILIES", "STEMS", "VARIANTS", "Backbone",
           "Encoder", "Projector", "ResNet", "ViT", "build_model",
           "check_config", "check_dtype", "check_image_size", "feature_dim",
           "frozen_params", "init_variables", "initial_keys",
           "initial_variables", "with_backbone_stats"]
