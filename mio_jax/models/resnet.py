"""ResNet-18/34/50 (+ a tiny test variant) and the MIO projector, in Flax Linen.

The layout follows torchvision (the backbone of the public MIO code): convs
without bias followed by BatchNorm (momentum 0.1 in PyTorch terms, eps 1e-5),
stride on the 3x3 conv of bottleneck blocks (ResNet v1.5), He-normal fan-out
initialisation. Two stems: `imagenet` (7x7 stride 2 + 3x3 max-pool) and
`cifar` (3x3 stride 1, no max-pool, for 32-64 px images).

BatchNorm statistics are over the global batch: inside `jax.jit` with the
batch sharded over the mesh, the mean/variance reductions are global
reductions (XLA inserts the all-reduce), so no `axis_name` is needed.
"""
import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from mio_jax import errors
from mio_jax.models import batch_norm


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
  """Depth and width of a ResNet: block type, blocks per stage, stem width."""
  block: str  # basic | bottleneck
  stage_sizes: tuple[int, ...]
  base_width: int  # channels of the stem and the first stage at width 1


BACKBONES: dict[str, BackboneSpec] = {
    # Two one-block stages of 16/32 channels: for tests and the CPU demo.
    "resnet_tiny": BackboneSpec("basic", (1, 1), 16),
    "resnet18": BackboneSpec("basic", (2, 2, 2, 2), 64),
    "resnet34": BackboneSpec("basic", (3, 4, 6, 3), 64),
    "resnet50": BackboneSpec("bottleneck", (3, 4, 6, 3), 64),
}
STEMS = ("cifar", "imagenet")
_EXPANSION = {"basic": 1, "bottleneck": 4}

# torchvision's kaiming_normal_(mode="fan_out", nonlinearity="relu").
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _batch_norm(train: bool, dtype: Any) -> Callable[..., nn.Module]:
  # Flax momentum is the weight of the old average: PyTorch's 0.1 is 0.9 here.
  # batch_norm.BatchNorm also takes the residual and the ReLU (fewer passes
  # over each activation on CPU; see its docstring).
  return functools.partial(batch_norm.BatchNorm, use_running_average=not train,
                           momentum=0.9, epsilon=1e-5, dtype=dtype)


def _conv(features: int, kernel: int, stride: int, dtype: Any,
          name: str) -> nn.Conv:
  # Explicit symmetric padding as in PyTorch ("SAME" pads stride-2 convs
  # asymmetrically, which would shift every feature map by half a pixel).
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False,
                 kernel_init=_conv_init, dtype=dtype, name=name)


def _shortcut(x: jnp.ndarray, features: int, stride: int,
              norm: Callable[..., nn.Module], dtype: Any) -> jnp.ndarray:
  """x, or a 1x1 conv + BN projection of x when the shapes differ.

  Called inside a block's compact `__call__`, so the projection's modules
  belong to that block (as `downsample_conv`, `downsample_bn`).
  """
  if x.shape[-1] != features or stride != 1:
    x = _conv(features, 1, stride, dtype, "downsample_conv")(x)
    x = norm(name="downsample_bn")(x)
  return x


class BasicBlock(nn.Module):
  """Two 3x3 convs with a residual connection (ResNet-18/34)."""
  features: int
  stride: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    norm = _batch_norm(train, self.dtype)
    y = _conv(self.features, 3, self.stride, self.dtype, "conv1")(x)
    y = norm(name="bn1")(y, relu=True)
    y = _conv(self.features, 3, 1, self.dtype, "conv2")(y)
    shortcut = _shortcut(x, self.features, self.stride, norm, self.dtype)
    return norm(name="bn2")(y, shortcut, relu=True)


class BottleneckBlock(nn.Module):
  """1x1 reduce, 3x3 (strided), 1x1 expand x4, residual (ResNet-50)."""
  features: int
  stride: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    norm = _batch_norm(train, self.dtype)
    out_features = self.features * _EXPANSION["bottleneck"]
    y = _conv(self.features, 1, 1, self.dtype, "conv1")(x)
    y = norm(name="bn1")(y, relu=True)
    y = _conv(self.features, 3, self.stride, self.dtype, "conv2")(y)
    y = norm(name="bn2")(y, relu=True)
    y = _conv(out_features, 1, 1, self.dtype, "conv3")(y)
    shortcut = _shortcut(x, out_features, self.stride, norm, self.dtype)
    return norm(name="bn3")(y, shortcut, relu=True)


_BLOCKS = {"basic": BasicBlock, "bottleneck": BottleneckBlock}


class ResNet(nn.Module):
  """A ResNet backbone: images (B, H, W, 3) -> pooled features (B, D)."""
  spec: BackboneSpec
  stem: str = "cifar"
  width_multiplier: float = 1.0
  dtype: Any = jnp.float32

  @property
  def stage_widths(self) -> tuple[int, ...]:
    base = max(1, round(self.spec.base_width * self.width_multiplier))
    return tuple(base * 2**i for i in range(len(self.spec.stage_sizes)))

  @property
  def feature_dim(self) -> int:
    return self.stage_widths[-1] * _EXPANSION[self.spec.block]

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    norm = _batch_norm(train, self.dtype)
    widths = self.stage_widths
    if self.stem == "imagenet":
      x = _conv(widths[0], 7, 2, self.dtype, "stem_conv")(x)
      x = norm(name="stem_bn")(x, relu=True)
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    else:
      x = _conv(widths[0], 3, 1, self.dtype, "stem_conv")(x)
      x = norm(name="stem_bn")(x, relu=True)
    block = _BLOCKS[self.spec.block]
    for stage, (num_blocks, width) in enumerate(
        zip(self.spec.stage_sizes, widths)):
      for i in range(num_blocks):
        stride = 2 if stage > 0 and i == 0 else 1
        x = block(width, stride, dtype=self.dtype,
                  name=f"stage{stage + 1}_block{i + 1}")(x, train=train)
    return jnp.mean(x, axis=(1, 2))


class Projector(nn.Module):
  """The MLP head of the public MIO code: [Dense-BN-ReLU] x (L-1), Dense-BN.

  Dense layers followed by BatchNorm carry no bias (BatchNorm has one).
  """
  num_layers: int = 2
  hidden_dim: int = 2048
  output_dim: int = 128
  last_bn: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    norm = _batch_norm(train, self.dtype)
    for i in range(self.num_layers - 1):
      x = nn.Dense(self.hidden_dim, use_bias=False, dtype=self.dtype,
                   name=f"dense{i + 1}")(x)
      x = norm(name=f"bn{i + 1}")(x, relu=True)
    x = nn.Dense(self.output_dim, use_bias=not self.last_bn, dtype=self.dtype,
                 name=f"dense{self.num_layers}")(x)
    if self.last_bn:
      x = norm(name=f"bn{self.num_layers}")(x)
    return x


def check_config(model_config: ml_collections.ConfigDict) -> None:
  """Raises errors.InvalidValueError (key relative to config.model) if bad."""
  errors.check_one_of("name", model_config.name, BACKBONES)
  errors.check_one_of("stem", model_config.stem, STEMS)
  errors.check_positive("width_multiplier", model_config.width_multiplier)


def build_backbone(model_config: ml_collections.ConfigDict, *,
                   dtype: Any) -> ResNet:
  """The ResNet `config.model` describes, computing in `dtype`."""
  check_config(model_config)
  return ResNet(BACKBONES[model_config.name], stem=model_config.stem,
                width_multiplier=model_config.width_multiplier, dtype=dtype)
