"""Values of every loss: hand-computed cases, a pair-by-pair reference,
invariances, dtypes and numerical stability."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from loss_testing import (LOSS_NAMES, call_loss, options_of, random_views,
                          reference_loss)
from mio_jax import losses


def test_orthonormal_views_match_closed_values():
  # Two images, views identical and orthogonal across images: every positive
  # similarity is 1, every negative similarity 0. With tau = 0.5 the positive
  # logit is 2 and each anchor has two negatives with logit 0.
  u = np.array([[3.0, 0.0], [0.0, 0.5]], np.float32)
  expected = {
      "mio": math.log1p(math.exp(-2)) + math.log(1 + (1 + 1) / 2),
      "bce": math.log1p(math.exp(-2)) + (math.log(2) + math.log(2)) / 2,
      "nt_xent": -2 + math.log(math.exp(2) + 2),
      "dcl": -2 + math.log(2),
  }
  for name, value in expected.items():
    np.testing.assert_allclose(call_loss(name, u, u, temperature=0.5), value,
                               rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("n,d", [(2, 2), (3, 5)])
def test_matches_pairwise_reference(name, n, d):
  u1, u2 = random_views(n * 10 + d, n, d)
  options = options_of(name, temperature=0.3, negative_temperature=0.7,
                       reg_weight=0.4)
  expected = reference_loss(u1, u2, name, 0.3, options.get(
      "negative_temperature"), options.get("reg_weight", 0.0))
  np.testing.assert_allclose(call_loss(name, u1, u2, **options), expected,
                             rtol=1e-5)


def test_mio_is_an_upper_bound_of_bce_negative_term():
  # Jensen: the mio negative term majorises the bce one, positive terms equal.
  u1, u2 = random_views(0, 8, 4)
  for tau in (0.1, 0.5, 2.0):
    assert (call_loss("mio", u1, u2, temperature=tau)
            >= call_loss("bce", u1, u2, temperature=tau) - 1e-6)


def test_bfloat16_inputs_give_float32_loss():
  u1, u2 = random_views(1, 8, 16)
  low = losses.mio_loss(jnp.asarray(u1, jnp.bfloat16),
                        jnp.asarray(u2, jnp.bfloat16))
  assert low.dtype == jnp.float32
  rounded = losses.mio_loss(
      jnp.asarray(u1, jnp.bfloat16).astype(jnp.float32),
      jnp.asarray(u2, jnp.bfloat16).astype(jnp.float32))
  np.testing.assert_allclose(low, rounded, rtol=1e-6)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_invariances(name):
  u1, u2 = random_views(11, 12, 6)
  options = options_of(name, temperature=0.2, negative_temperature=0.3,
                       reg_weight=0.5)
  base = call_loss(name, u1, u2, **options)
  rng = np.random.default_rng(12)
  permutation = rng.permutation(12)
  scales = rng.uniform(0.01, 100.0, size=(2, 12, 1)).astype(np.float32)
  np.testing.assert_allclose(call_loss(name, u2, u1, **options), base,
                             rtol=1e-5)
  np.testing.assert_allclose(
      call_loss(name, u1[permutation], u2[permutation], **options), base,
      rtol=1e-5)
  np.testing.assert_allclose(
      call_loss(name, u1 * scales[0], u2 * scales[1], **options), base,
      rtol=1e-5)


@pytest.mark.parametrize("variant", ["mio", "bce"])
def test_large_batch_low_temperature_is_finite(variant):
  u1, u2 = random_views(5, 4096, 128)
  loss, grads = jax.jit(jax.value_and_grad(
      functools.partial(losses.mio_loss, variant=variant, temperature=0.01),
      argnums=(0, 1)))(u1, u2)
  assert np.isfinite(loss)
  assert all(np.all(np.isfinite(g)) for g in grads)


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("case", ["identical", "antipodal"])
def test_degenerate_embeddings_are_finite(name, case):
  row = np.arange(1.0, 9.0, dtype=np.float32)
  u1 = np.tile(row, (16, 1))
  u2 = u1 if case == "identical" else -u1
  fn = losses.make_loss(name, temperature=0.01)
  loss, grads = jax.value_and_grad(fn, argnums=(0, 1))(u1, u2)
  assert np.isfinite(loss)
  assert all(np.all(np.isfinite(g)) for g in grads)
  if name in ("mio", "bce"):
    closed = losses.mio_loss_grad(u1, u2, variant=name, temperature=0.01)
    assert all(np.all(np.isfinite(g)) for g in closed)
