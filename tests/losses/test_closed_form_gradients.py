"""The closed-form gradients of the binary losses (mio.mio_loss_grad,
bce.bce_loss_grad) against jax.grad, in float64."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from loss_testing import random_views, relative_error
from mio_jax import losses

# (tau_p, tau_n, lambda): the three temperatures, unequal ones, a regulariser.
_GRAD_SETTINGS = [(0.05, 0.05, 0.0), (0.5, 0.5, 0.0), (1.0, 1.0, 0.0),
                  (0.5, 0.1, 0.0), (0.05, 1.0, 0.3), (0.5, 0.5, 2.0)]

# Each binary loss with its closed-form gradient, as its own module names it.
_LOSS_AND_GRAD = {"mio": (losses.mio_loss, losses.mio_loss_grad),
                  "bce": (losses.bce_loss, losses.bce_loss_grad)}


@functools.lru_cache(maxsize=None)
def _jitted_grads(name):
  """(autodiff, closed form) gradients, jitted once per loss (and shape)."""
  loss_fn, grad_fn = _LOSS_AND_GRAD[name]

  def autodiff(u1, u2, tau_p, tau_n, lam):
    return jax.grad(
        functools.partial(loss_fn, temperature=tau_p,
                          negative_temperature=tau_n, reg_weight=lam),
        argnums=(0, 1))(u1, u2)

  def closed(u1, u2, tau_p, tau_n, lam):
    return grad_fn(u1, u2, temperature=tau_p, negative_temperature=tau_n,
                   reg_weight=lam)
  return jax.jit(autodiff), jax.jit(closed)


@pytest.mark.parametrize("name", ["mio", "bce"])
@pytest.mark.parametrize("n", [2, 3, 16, 64])
@pytest.mark.parametrize("d", [1, 8, 128])
def test_closed_form_gradient_matches_autodiff(name, n, d):
  with jax.enable_x64(True):
    u1, u2 = random_views(n * 1000 + d, n, d, np.float64)
    # Rows of unequal norms exercise the 1/||u|| of the normalisation.
    u1 *= np.linspace(0.2, 5.0, n)[:, None]
    autodiff, closed = _jitted_grads(name)
    for tau_p, tau_n, lam in _GRAD_SETTINGS:
      want = autodiff(u1, u2, tau_p, tau_n, lam)
      got = closed(u1, u2, tau_p, tau_n, lam)
      assert got[0].dtype == jnp.float64
      if d == 1:
        # Unit vectors in 1-D are +-1: no direction to move, both are ~0.
        assert np.max(np.abs(np.concatenate(got + want))) <= 1e-12
        continue
      error = relative_error(got, want)
      assert error <= 1e-10, (tau_p, tau_n, lam, error)


@pytest.mark.parametrize("variant", ["mio", "bce"])
def test_closed_form_gradient_flows_into_last_projector_layer(variant):
  n, hidden, d = 6, 5, 3
  with jax.enable_x64(True):
    rng = np.random.default_rng(7)
    h1, h2 = rng.normal(size=(2, n, hidden))
    weight, bias = rng.normal(size=(d, hidden)), rng.normal(size=(d,))
    options = dict(variant=variant, temperature=0.2, negative_temperature=0.4,
                   reg_weight=0.5)

    def loss_of_layer(weight, bias):
      return losses.mio_loss(h1 @ weight.T + bias, h2 @ weight.T + bias,
                             **options)

    want_w, want_c = jax.jit(jax.grad(loss_of_layer, argnums=(0, 1)))(
        weight, bias)
    g1, g2 = losses.mio_loss_grad(h1 @ weight.T + bias, h2 @ weight.T + bias,
                                  **options)
    # dL/dW = sum_i dL/du_i h_i^T, dL/dc = sum_i dL/du_i over both views.
    got_w = g1.T @ h1 + g2.T @ h2
    got_c = g1.sum(0) + g2.sum(0)
    assert relative_error([got_w, got_c], [want_w, want_c]) <= 1e-10


def test_closed_form_gradient_of_a_zero_row_matches_autodiff():
  with jax.enable_x64(True):
    u1, u2 = random_views(3, 4, 3, np.float64)
    u1[2] = 0.0
    want = jax.jit(jax.grad(losses.mio_loss, argnums=(0, 1)))(u1, u2)
    got = losses.mio_loss_grad(u1, u2)
    assert np.all(np.isfinite(np.concatenate(want)))
    assert relative_error(got, want) <= 1e-10


def test_variant_bce_is_the_bce_gradient():
  u1, u2 = random_views(4, 5, 3)
  options = dict(temperature=0.3, negative_temperature=0.6, reg_weight=0.1)
  np.testing.assert_array_equal(
      losses.mio_loss_grad(u1, u2, variant="bce", **options),
      losses.bce_loss_grad(u1, u2, **options))
