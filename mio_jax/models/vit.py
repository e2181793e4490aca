"""Vision Transformers (ViT-Ti/S/B/L + a tiny test variant), in Flax Linen.

The layout of big_vision's and timm's ViT, which MoCo v3 and DINO train:
a patch embedding (a conv of kernel and stride `patch_size`), an optional
class token, a position embedding (fixed 2-D sin-cos as MoCo v3, or learned
as timm), pre-LayerNorm blocks (LN -> multi-head attention -> residual,
LN -> MLP (GELU, 4x) -> residual), a final LayerNorm; the features are the
class token's output or the mean over the patch tokens (`pool`).

There is no BatchNorm in the backbone: its variables are {"params"} only
(the encoder's projector may still have BatchNorm statistics).

Attention is `attention` below, written for XLA:TPU's HBM traffic (what
bounds a ViT step there; docs/performance.md, "ViT"): logits and
probabilities in the compute dtype around a float32 softmax, and flash
attention's backward pass.
`jax.nn.dot_product_attention` would pick the same XLA einsums on every
backend in jax 0.10.2 (its implementation=None is XLA's, never cuDNN's),
with float32 logits and a float32 softmax kept for the backward pass.
"""
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mio_jax import errors


@dataclasses.dataclass(frozen=True)
class VitSpec:
  """Width, depth and heads of a ViT (the MLP is 4x wide for all of them)."""
  width: int
  depth: int
  num_heads: int
  mlp_dim: int


VARIANTS: dict[str, VitSpec] = {
    # Width 32, two blocks of two heads: for tests and the CPU demo.
    "vit_test": VitSpec(32, 2, 2, 128),
    "vit_tiny": VitSpec(192, 12, 3, 768),
    "vit_small": VitSpec(384, 12, 6, 1536),
    "vit_base": VitSpec(768, 12, 12, 3072),
    "vit_large": VitSpec(1024, 24, 16, 4096),
}
POSEMBS = ("sincos2d", "learned")
POOLS = ("token", "gap")
# Parameters that get no weight decay besides biases and LayerNorm scales
# (optim.decay_mask): timm's no_weight_decay, as MoCo v3 and DINO train.
EMBEDDING_PARAMS = ("pos_embedding", "cls_token")

_LN_EPSILON = 1e-6  # timm's and big_vision's ViT LayerNorm
# timm's / MoCo v3's init: Xavier-uniform weights, zero biases.
_dense_init = nn.initializers.xavier_uniform()


def sincos_posemb_2d(side: int, width: int,
                     temperature: float = 10_000.0) -> np.ndarray:
  """MoCo v3's fixed 2-D sin-cos embedding of a side x side grid: (side^2, width).

  A quarter of the channels each: sin and cos of the column, sin and cos of
  the row, at `width / 4` frequencies. width must be divisible by 4.
  """
  rows, cols = np.meshgrid(np.arange(side, dtype=np.float64),
                           np.arange(side, dtype=np.float64), indexing="ij")
  quarter = width // 4
  omega = 1.0 / temperature**(np.arange(quarter) / quarter)
  out_cols = cols.reshape(-1, 1) * omega
  out_rows = rows.reshape(-1, 1) * omega
  return np.concatenate([np.sin(out_cols), np.cos(out_cols),
                         np.sin(out_rows), np.cos(out_rows)],
                        axis=1).astype(np.float32)


def exact_gelu(x: jnp.ndarray) -> jnp.ndarray:
  """The exact (erf) GELU of timm, MoCo v3 and DINO: x Phi(x).

  Written with erf, not as jax.nn.gelu(approximate=False)'s erfc: XLA:CPU's
  erfc costs about 10x its erf (84 ms against 8 ms on a ViT-S/16 block's
  16 x 197 x 1536 floats), which made the MLP of a CPU step 1.5x torch's.
  The two agree within 5e-7 (absolute; gradients within 3e-7) on
  [-10, 10], measured in float32. For very negative x, 1 + erf cancels, so
  there the erf form is accurate in absolute terms only (below x = -5,
  where |GELU| < 1.5e-6, it is off by at most 3e-7).
  """
  return 0.5 * x * (1.0 + jax.lax.erf(x * 2**-0.5))


class MlpBlock(nn.Module):
  """Dense (mlp_dim) -> GELU -> Dense (back to the input width)."""
  mlp_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    width = x.shape[-1]
    x = nn.Dense(self.mlp_dim, dtype=self.dtype, kernel_init=_dense_init,
                 name="fc1")(x)
    # Recomputed in the backward pass from its input, which is kept anyway:
    # keeping GELU's output too wrote a second (tokens x mlp_dim) array.
    x = jax.checkpoint(exact_gelu)(x)
    return nn.Dense(width, dtype=self.dtype, kernel_init=_dense_init,
                    name="fc2")(x)


def attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray) -> jnp.ndarray:
  """Softmax attention of (batch, tokens, heads, head_dim) q, k, v.

  The logits and probabilities are in the compute dtype, the softmax
  float32 inside XLA's fusions. Flash attention's backward pass: only each
  row's log-normaliser is kept (no (tokens x tokens) array); the backward
  pass recomputes the probabilities from q, k and it (one more q k^T
  matmul) and uses dS = P * (dP - rowsum(dO * O)).

  Why not jax.nn.dot_product_attention (jax 0.10.2, implementation=None:
  XLA's on every backend): it keeps the float32 softmax for the backward
  pass and writes float32 logits and their gradient. On a v4-8, ViT-B/16
  pretraining at 1024 images: 410.0 GB per chip per step with the
  probabilities kept in bfloat16, 318.8 GB with this (docs/performance.md,
  "ViT").

  The heads go in front of the tokens for the matmuls: XLA:CPU's batched
  matmuls over (batch, heads) ran 1.6-1.7x faster fwd+bwd on ViT-S/16's step shapes
  with the batch dimensions leading (TPU layouts are XLA's own choice).
  """
  heads_first = lambda x: x.transpose(0, 2, 1, 3)
  return heads_first(_attention(heads_first(q), heads_first(k),
                                heads_first(v)))


@jax.custom_vjp
def _attention(q, k, v):
  """`attention` of (batch, heads, tokens, head_dim) q, k, v."""
  return _attention_forward(q, k, v)[0]


def _scaled_logits(q, k):
  """float32 logits / sqrt(head_dim), from the compute dtype's q k^T."""
  logits = jnp.einsum("bhqd,bhkd->bhqk", q, k)
  return logits.astype(jnp.float32) * q.shape[-1]**-0.5


def _attention_forward(q, k, v):
  logits = _scaled_logits(q, k)
  log_norm = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
  probs = jnp.exp(logits - log_norm).astype(v.dtype)
  out = jnp.einsum("bhqk,bhkd->bhqd", probs, v)
  return out, (q, k, v, log_norm, out)


def _attention_backward(residuals, d_out):
  q, k, v, log_norm, out = residuals
  probs = jnp.exp(_scaled_logits(q, k) - log_norm).astype(v.dtype)
  d_v = jnp.einsum("bhqk,bhqd->bhkd", probs, d_out)
  d_probs = jnp.einsum("bhqd,bhkd->bhqk", d_out, v,
                       preferred_element_type=jnp.float32)
  # sum_k P_qk dP_qk = dO_q . O_q: the softmax's backward needs no second
  # pass over the (tokens x tokens) probabilities.
  row = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32),
                axis=-1, keepdims=True)
  d_logits = (probs.astype(jnp.float32) * (d_probs - row)
              * q.shape[-1]**-0.5).astype(q.dtype)
  d_q = jnp.einsum("bhqk,bhkd->bhqd", d_logits, k)
  d_k = jnp.einsum("bhqk,bhqd->bhkd", d_logits, q)
  return d_q, d_k, d_v


_attention.defvjp(_attention_forward, _attention_backward)


class Attention(nn.Module):
  """Multi-head self-attention: one qkv projection, attention, output."""
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    batch, tokens, width = x.shape
    head_dim = width // self.num_heads
    qkv = nn.Dense(3 * width, dtype=self.dtype, kernel_init=_dense_init,
                   name="qkv")(x)
    q, k, v = jnp.split(qkv.reshape(batch, tokens, 3, self.num_heads,
                                    head_dim), 3, axis=2)
    out = attention(q[:, :, 0], k[:, :, 0], v[:, :, 0])
    return nn.Dense(width, dtype=self.dtype, kernel_init=_dense_init,
                    name="proj")(out.reshape(batch, tokens, width))


class Encoder1DBlock(nn.Module):
  """Pre-LN transformer block, each branch dropped per example (drop path)."""
  num_heads: int
  mlp_dim: int
  drop_path: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    # Stochastic depth: a branch kept or dropped for a whole example
    # (dropout broadcast over tokens and channels), rescaled by 1/keep.
    drop = nn.Dropout(self.drop_path, broadcast_dims=(1, 2),
                      deterministic=not train or self.drop_path == 0)
    y = nn.LayerNorm(epsilon=_LN_EPSILON, dtype=self.dtype, name="norm1")(x)
    x = x + drop(Attention(self.num_heads, dtype=self.dtype, name="attn")(y))
    y = nn.LayerNorm(epsilon=_LN_EPSILON, dtype=self.dtype, name="norm2")(x)
    return x + drop(MlpBlock(self.mlp_dim, dtype=self.dtype, name="mlp")(y))


class ViT(nn.Module):
  """A ViT backbone: images (B, H, W, 3) -> features (B, width).

  drop_path: the largest stochastic-depth rate, reached by the last block
  (the rate grows linearly with depth, as DeiT and MAE). remat_blocks: how
  many blocks, from the first, recompute their activations in the backward
  pass instead of keeping them (Megatron-LM's block-wise recompute): each
  one saves its activations' memory for one more forward pass of it; 0
  none, depth (or more) all. freeze_patch_embedding: MoCo v3's frozen random patch
  projection; no gradient reaches it (and the optimizer leaves it alone:
  `models.frozen_params`).
  """
  spec: VitSpec
  patch_size: int = 16
  posemb: str = "sincos2d"
  pool: str = "token"
  drop_path: float = 0.0
  remat_blocks: int = 0
  freeze_patch_embedding: bool = False
  dtype: Any = jnp.float32

  @property
  def feature_dim(self) -> int:
    return self.spec.width

  @property
  def num_layers(self) -> int:
    """Transformer blocks (the depth layer-wise lr decay counts)."""
    return self.spec.depth

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    check_image_size(x.shape[1], self.patch_size)
    width = self.spec.width
    x = nn.Conv(width, (self.patch_size, self.patch_size),
                strides=(self.patch_size, self.patch_size), padding="VALID",
                dtype=self.dtype, name="patch_embedding")(x)
    if self.freeze_patch_embedding:
      x = jax.lax.stop_gradient(x)
    batch, rows, cols, _ = x.shape
    x = x.reshape(batch, rows * cols, width)
    extra_tokens = 1 if self.pool == "token" else 0
    if self.pool == "token":
      cls = self.param("cls_token", nn.initializers.zeros, (1, 1, width))
      x = jnp.concatenate(
          [jnp.broadcast_to(cls.astype(x.dtype), (batch, 1, width)), x], 1)
    x = x + self._position_embedding(rows, extra_tokens).astype(x.dtype)

    recomputed_block = nn.remat(Encoder1DBlock, static_argnums=(2,))
    for i in range(self.spec.depth):
      rate = self.drop_path * i / max(self.spec.depth - 1, 1)
      block = recomputed_block if i < self.remat_blocks else Encoder1DBlock
      x = block(self.spec.num_heads, self.spec.mlp_dim, drop_path=rate,
                dtype=self.dtype, name=f"block{i + 1}")(x, train)
    # LayerNorm acts on each token alone: with the class token the others'
    # need no normalising (a float32 LayerNorm of all 197 tokens of ViT-B/16
    # moved 1.4 GB per chip per step on a v4-8).
    x = x[:, 0] if self.pool == "token" else x
    x = nn.LayerNorm(epsilon=_LN_EPSILON, dtype=self.dtype, name="norm")(x)
    return x if self.pool == "token" else jnp.mean(x, axis=1)

  def _position_embedding(self, side: int, extra_tokens: int) -> jnp.ndarray:
    """(1, extra_tokens + side^2, width); the class token's row is zero
    when fixed (MoCo v3) and learned when learned (timm)."""
    width = self.spec.width
    if self.posemb == "learned":
      return self.param("pos_embedding", nn.initializers.normal(0.02),
                        (1, extra_tokens + side * side, width))
    fixed = sincos_posemb_2d(side, width)
    return jnp.asarray(np.concatenate(
        [np.zeros((extra_tokens, width), np.float32), fixed]))[None]


def check_image_size(image_size: int, patch_size: int) -> None:
  """Raises errors.InvalidValueError unless patches tile the image."""
  if image_size % patch_size:
    raise errors.InvalidValueError(
        "patch_size", patch_size,
        f"does not divide the image size {image_size}",
        "use a patch size that divides dataset.image_size (e.g. {key}="
        f"{_divisor_near(image_size, patch_size)}) or change the image size")


def _divisor_near(n: int, wanted: int) -> int:
  return min((d for d in range(1, n + 1) if n % d == 0),
             key=lambda d: abs(d - wanted))


def check_config(model_config: ml_collections.ConfigDict) -> None:
  """Raises errors.InvalidValueError (key relative to config.model) if bad."""
  errors.check_one_of("name", model_config.name, VARIANTS)
  errors.check_positive("patch_size", model_config.patch_size)
  errors.check_one_of("posemb", model_config.posemb, POSEMBS)
  errors.check_one_of("pool", model_config.pool, POOLS)
  if not 0 <= model_config.drop_path < 1:
    raise errors.InvalidValueError("drop_path", model_config.drop_path,
                                   "must be in [0, 1)",
                                   "use e.g. {key}=0.1 (0: no drop path)")
  errors.check_positive("remat_blocks", model_config.remat_blocks,
                        allow_zero=True)
  spec = VARIANTS[model_config.name]
  if model_config.posemb == "sincos2d" and spec.width % 4:
    raise errors.InvalidValueError(
        "posemb", model_config.posemb,
        f"needs a width divisible by 4 ({model_config.name} has {spec.width})",
        "use {key}=learned")


def build_backbone(model_config: ml_collections.ConfigDict, *,
                   dtype: Any) -> ViT:
  """The ViT `config.model` describes, computing in `dtype`."""
  check_config(model_config)
  return ViT(VARIANTS[model_config.name], patch_size=model_config.patch_size,
             posemb=model_config.posemb, pool=model_config.pool,
             drop_path=model_config.drop_path,
             remat_blocks=model_config.remat_blocks,
             freeze_patch_embedding=model_config.freeze_patch_embedding,
             dtype=dtype)


def layer_id(path: tuple[str, ...], num_layers: int) -> int:
  """The layer of a backbone parameter for layer-wise lr decay (BEiT, MAE).

  path: the parameter's names inside the backbone. The embeddings are
  layer 0, block i is layer i, the final LayerNorm num_layers + 1 (the
  head, outside the backbone, is num_layers + 1 too).
  """
  name = path[0]
  if name.startswith("block"):
    return int(name[len("block"):])
  if name == "norm":
    return num_layers + 1
  return 0
