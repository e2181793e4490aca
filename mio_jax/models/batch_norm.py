"""BatchNorm with the residual add and ReLU, in the form best for each backend.

`BatchNorm` computes what `flax.linen.BatchNorm` computes (same variables,
momentum, epsilon, statistics over every axis but the last, variance as
E[x^2] - E[x]^2 clipped at 0, statistics in at least float32, output cast to
`dtype`) and optionally `relu(bn(x) + residual)` in the same call. In train
mode it has two forms, whose values and gradients equal Flax's + `nn.relu`
to float64 rounding (tests/models/test_batch_norm.py):

  * "fused" (`normalize_batch`), for XLA:CPU. There the elementwise work
    around the convolutions is memory-bound, so what counts is how many
    times a full activation tensor is read or written. Differentiating
    Flax's `(x - mean) * (scale * rsqrt(var + eps)) + bias` then `nn.relu`
    keeps `x - mean` and the pre-activation as residuals, and XLA's library
    fusions (`mio_jax.CPU_FUSION_FLAG`, `+eltwise`) split the chain into
    several passes plus a materialised per-channel broadcast. Here the
    forward pass is one affine map `x * a + b` (+ residual, ReLU) after the
    two statistics, and the tangent rule (`jax.custom_jvp`, so
    forward-over-reverse Hessian products still work) needs only x, the
    output y and per-channel vectors. On the 2-core AVX-512 Xeon of
    docs/performance.md (issue 20 section) the whole ResNet-18 step went
    from 14.0 to 15.3-15.7 images per CPU-second.
  * "flax" (`flax_batch_norm`), Flax's formulation followed by the residual
    add and ReLU in the output dtype, for TPU and GPU. XLA:TPU fuses it
    into the convolutions' neighbours by itself, and the fused form's
    float32 output, kept for its backward pass, costs HBM bytes there: the
    ImageNet-1K ResNet-50 step on a v4-8 (bfloat16, batch 1024) counted
    163.3 GB per chip with the fused form and 150.7 GB with this one
    (docs/performance.md, "BatchNorm per backend").

`BatchNorm(form=None)` picks the form by the platform the step is lowered
for (`jax.lax.platform_dependent`), not by the host: a TPU step compiled on a
CPU machine (`mio_jax.cli.tpu_compile`) gets the "flax" form.
"""
import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mio_jax import errors

Array = jax.Array


def _statistics_dtype(dtype: Any) -> Any:
  return jnp.promote_types(dtype, jnp.float32)


def _positive(y: Array) -> Array:
  """y > 0, computed on the bits of y.

  For y = max(z, 0), XLA's simplifier rewrites `y > 0` to `z > 0`; the
  backward pass would then need the pre-activation z, which XLA materialises
  as one more full tensor. The sign bit and magnitude of an IEEE float read
  as a signed integer order the same way, so the integer comparison is
  exact and keeps the backward pass reading y, which is live anyway.
  """
  int_type = {4: jnp.int32, 8: jnp.int64, 2: jnp.int16}[y.dtype.itemsize]
  return jax.lax.bitcast_convert_type(y, int_type) > 0


def _forward(x, scale, bias, residual, epsilon, relu):
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axes)
  raw_var = jnp.mean(x * x, axes) - mean * mean
  var = jnp.maximum(0.0, raw_var)
  inv_std = jax.lax.rsqrt(var + epsilon)
  a = scale * inv_std
  y = x * a + (bias - mean * a)
  if residual is not None:
    y = y + residual
  if relu:
    y = jnp.maximum(y, 0.0)
  return (y, mean, var), (raw_var, inv_std, a)


@functools.partial(jax.custom_jvp, nondiff_argnums=(4, 5))
def normalize_batch(x: Array, scale: Array, bias: Array,
                    residual: Optional[Array], epsilon: float,
                    relu: bool) -> tuple[Array, Array, Array]:
  """(y, mean, var) of a train-mode BatchNorm over all axes but the last.

  x: (..., C) in a float dtype of at least 32 bits; scale, bias: (C,);
  residual: None or x's shape, added before the ReLU. Returns the output
  y = [relu](x * a + b [+ residual]) with a = scale / sqrt(var + epsilon),
  b = bias - mean * a, and the batch mean and (biased) variance.
  """
  return _forward(x, scale, bias, residual, epsilon, relu)[0]


@normalize_batch.defjvp
def _normalize_batch_jvp(epsilon, relu, primals, tangents):
  x, scale, bias, residual = primals
  dx, dscale, dbias, dresidual = tangents
  (y, mean, var), (raw_var, inv_std, a) = _forward(
      x, scale, bias, residual, epsilon, relu)
  axes = tuple(range(x.ndim - 1))
  dmean = jnp.mean(dx, axes)
  dvar = jnp.where(raw_var > 0, 2.0 * (jnp.mean(x * dx, axes) - mean * dmean),
                   0.0)
  da = dscale * inv_std - 0.5 * scale * inv_std**3 * dvar
  db = dbias - dmean * a - mean * da
  # Per-channel vectors broadcast over a 2-D view here, not the 4-D view of
  # the forward pass: XLA would otherwise share one broadcast between both
  # passes and materialise it as a full tensor.
  channels = x.shape[-1]
  flat = lambda t: t.reshape(-1, channels)
  dy = (flat(dx) * a[None] + flat(x) * da[None] + db[None]).reshape(x.shape)
  if residual is not None:
    dy = dy + dresidual
  if relu:
    dy = jnp.where(_positive(y), dy, 0.0)
  return (y, mean, var), (dy, dmean, dvar)


def flax_batch_norm(x: Array, scale: Array, bias: Array,
                    residual: Optional[Array], epsilon: float, relu: bool,
                    dtype: Any) -> tuple[Array, Array, Array]:
  """(y, mean, var) as `flax.linen.BatchNorm` then + residual, `nn.relu`.

  The same arguments as `normalize_batch` plus the output dtype: the
  normalisation is in x's (at least float32) dtype, the residual add and
  the ReLU in `dtype`, as in a model built from Flax's BatchNorm.
  """
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axes)
  var = jnp.maximum(0.0, jnp.mean(x * x, axes) - mean * mean)
  y = ((x - mean) * (scale * jax.lax.rsqrt(var + epsilon)) + bias).astype(dtype)
  if residual is not None:
    y = y + residual.astype(dtype)
  if relu:
    y = nn.relu(y)
  return y, mean, var


def _fused_batch_norm(x, scale, bias, residual, epsilon, relu, dtype):
  if residual is not None:
    residual = residual.astype(x.dtype)
  y, mean, var = normalize_batch(x, scale, bias, residual, epsilon, relu)
  return y.astype(dtype), mean, var


# Train-mode forms by name; None picks one by the platform lowered for.
FORMS = {"fused": _fused_batch_norm, "flax": flax_batch_norm}


def _per_platform(x, scale, bias, residual, epsilon, relu, dtype):
  def form(name):
    # The scope names the form in the lowered program's op metadata.
    @jax.named_scope(f"batch_norm_{name}")
    def apply(x, scale, bias, residual):
      return FORMS[name](x, scale, bias, residual, epsilon, relu, dtype)
    return apply

  return jax.lax.platform_dependent(x, scale, bias, residual,
                                    cpu=form("fused"), default=form("flax"))


class BatchNorm(nn.Module):
  """BatchNorm (optionally + residual, ReLU); variables as flax's BatchNorm.

  momentum is the weight of the old running average (Flax's convention).
  Parameters {"scale", "bias"} and batch statistics {"mean", "var"} are
  float32 (C,) arrays, so checkpoints of `flax.linen.BatchNorm` load as is.
  form: the train-mode form, a key of FORMS, or None for the one best on
  the platform the step is lowered for ("fused" on CPU, else "flax").
  """
  use_running_average: bool
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Any = jnp.float32
  form: Optional[str] = None

  @nn.compact
  def __call__(self, x: Array, residual: Optional[Array] = None, *,
               relu: bool = False) -> Array:
    features = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    running_mean = self.variable("batch_stats", "mean", jnp.zeros,
                                 (features,), jnp.float32)
    running_var = self.variable("batch_stats", "var", jnp.ones, (features,),
                                jnp.float32)
    compute_dtype = _statistics_dtype(x.dtype)
    x = x.astype(compute_dtype)
    if self.use_running_average:
      a = scale * jax.lax.rsqrt(running_var.value + self.epsilon)
      y = x * a + (bias - running_mean.value * a)
      if residual is not None:
        y = y + residual.astype(compute_dtype)
      if relu:
        y = jnp.maximum(y, 0.0)
      return y.astype(self.dtype)
    if self.form is None:
      apply = _per_platform
    else:
      errors.check_one_of("form", self.form, FORMS)
      apply = FORMS[self.form]
    y, mean, var = apply(x, scale, bias, residual, self.epsilon, relu,
                         self.dtype)
    if not self.is_initializing():
      running_mean.value = (self.momentum * running_mean.value
                            + (1 - self.momentum) * mean)
      running_var.value = (self.momentum * running_var.value
                           + (1 - self.momentum) * var)
    return y
