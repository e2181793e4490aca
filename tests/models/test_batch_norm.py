import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mio_jax import errors
from mio_jax.models import batch_norm

SHAPE = (6, 5, 4, 3)


def _inputs():
  keys = jax.random.split(jax.random.key(0), 3)
  x = 3.0 * jax.random.normal(keys[0], SHAPE, jnp.float64) + 1.0
  residual = jax.random.normal(keys[1], SHAPE, jnp.float64)
  cotangent_weights = jax.random.normal(keys[2], SHAPE, jnp.float64)
  params = {"scale": jnp.array([0.5, 1.0, -1.5]),
            "bias": jnp.array([-1.0, 0.0, 0.7])}
  stats = {"mean": jnp.array([0.1, -0.2, 0.3]),
           "var": jnp.array([1.5, 0.5, 2.0])}
  return x, residual, cotangent_weights, params, stats


def _flax_reference(x, residual, relu, train):
  """flax.linen.BatchNorm, then + residual, then nn.relu: the old model."""
  bn = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                    epsilon=1e-5, dtype=x.dtype)

  def apply(variables, x, residual):
    y, updates = bn.apply(variables, x, mutable=["batch_stats"])
    if residual is not None:
      y = y + residual
    return (nn.relu(y) if relu else y), updates

  return apply


def _ours(x, residual, relu, train, form=None):
  bn = batch_norm.BatchNorm(use_running_average=not train, momentum=0.9,
                            epsilon=1e-5, dtype=x.dtype, form=form)

  def apply(variables, x, residual):
    return bn.apply(variables, x, residual, relu=relu, mutable=["batch_stats"])

  return apply


def _everything(apply, params, stats, x, residual, weights):
  """Output, updated statistics, gradients and a Hessian-vector product."""

  def objective(params, x, residual):
    y, updates = apply({"params": params, "batch_stats": stats}, x, residual)
    return jnp.sum(jnp.sin(y) * weights), updates

  (value, updates), grads = jax.value_and_grad(
      objective, argnums=(0, 1, 2), has_aux=True)(params, x, residual)
  tangent = jax.tree.map(jnp.ones_like, params)
  hvp = jax.jvp(jax.grad(lambda p: objective(p, x, residual)[0]), (params,),
                (tangent,))[1]
  return value, updates, grads, hvp


@pytest.fixture(autouse=True)
def _float64():
  with jax.enable_x64(True):
    yield


@pytest.mark.parametrize("form", [None, *batch_norm.FORMS])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_matches_flax_batchnorm_plus_residual_and_relu(form, train,
                                                        with_residual, relu):
  x, residual, weights, params, stats = _inputs()
  residual = residual if with_residual else None
  ours = _everything(_ours(x, residual, relu, train, form), params, stats, x,
                     residual, weights)
  reference = _everything(_flax_reference(x, residual, relu, train), params,
                          stats, x, residual, weights)
  # value, running statistics, d/d(params, x, residual), Hessian-vector
  # product (forward over reverse, as mio_jax.analysis.hessian takes it).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10,
                                                       atol=1e-10),
               ours, reference)


@pytest.mark.parametrize("platform,form", [("cpu", "fused"), ("tpu", "flax"),
                                           ("cuda", "flax"), ("rocm", "flax")])
def test_the_form_follows_the_platform_lowered_for(platform, form):
  # As tpu_compile lowers a TPU step on a CPU host: the form is the
  # target's, whatever backend this process runs.
  x = jnp.ones(SHAPE, jnp.float32)
  bn = batch_norm.BatchNorm(use_running_average=False)
  variables = bn.init(jax.random.key(0), x)

  def loss(params, x):
    y, _ = bn.apply({**variables, "params": params}, x, x, relu=True,
                    mutable=["batch_stats"])
    return jnp.sum(y * y)

  traced = jax.jit(jax.grad(loss, argnums=(0, 1))).trace(
      variables["params"], x)
  text = traced.lower(lowering_platforms=(platform,)).as_text(debug_info=True)
  scopes = {name for name in batch_norm.FORMS
            if f"batch_norm_{name}" in text}
  assert scopes == {form}


def test_an_unknown_form_is_refused_with_the_valid_names():
  bn = batch_norm.BatchNorm(use_running_average=False, form="fast")
  with pytest.raises(errors.InvalidValueError, match="'fused', 'flax'"):
    bn.init(jax.random.key(0), jnp.ones(SHAPE))


def test_variables_are_those_of_flax_batchnorm():
  x = jnp.ones(SHAPE, jnp.float32)
  ours = batch_norm.BatchNorm(use_running_average=False).init(
      jax.random.key(0), x)
  flax_bn = nn.BatchNorm(use_running_average=False).init(jax.random.key(0), x)
  assert jax.tree.map(lambda v: (v.shape, v.dtype), ours) == jax.tree.map(
      lambda v: (v.shape, v.dtype), flax_bn)


@pytest.mark.parametrize("form", batch_norm.FORMS)
def test_bfloat16_computes_statistics_in_float32(form):
  x = (1000.0 + jnp.arange(64.0)).reshape(16, 4).astype(jnp.bfloat16)
  bn = batch_norm.BatchNorm(use_running_average=False, dtype=jnp.bfloat16,
                            form=form)
  variables = bn.init(jax.random.key(0), x)
  y, updates = bn.apply(variables, x, mutable=["batch_stats"])
  assert y.dtype == jnp.bfloat16
  # The running statistics are float32 variables whatever precision made
  # them: check their values. Each column's 16 bfloat16 values sum to about
  # 16,500, where bfloat16's spacing is 128; E[x^2] - E[x]^2 of values near
  # 1000 is lost entirely in bfloat16.
  inputs = np.asarray(x, np.float64)
  momentum = bn.momentum
  np.testing.assert_allclose(updates["batch_stats"]["mean"],
                             (1 - momentum) * inputs.mean(0), rtol=1e-6)
  np.testing.assert_allclose(updates["batch_stats"]["var"],
                             momentum + (1 - momentum) * inputs.var(0),
                             rtol=1e-3)  # float32's own E[x^2] - E[x]^2: 2e-4
  expected = nn.BatchNorm(use_running_average=False, dtype=jnp.bfloat16).apply(
      variables, x, mutable=["batch_stats"])[0]
  np.testing.assert_allclose(np.asarray(y, np.float32),
                             np.asarray(expected, np.float32), atol=0.02)


def test_positive_reads_the_sign_of_the_output():
  y = jnp.array([0.0, -0.0, 1e-38, 2.0, jnp.inf, -3.0], jnp.float32)
  np.testing.assert_array_equal(
      batch_norm._positive(y), [False, False, True, True, True, False])
