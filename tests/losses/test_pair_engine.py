"""The pair engine (mio_jax/losses/_pairs.py): any per-anchor formula,
full-precision similarities, streamed blocks equal to the dense loss,
bounded memory, and the errors of bad shapes and block sizes."""
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from loss_testing import LOSS_NAMES, options_of, random_views
from mio_jax import errors
from mio_jax import losses
from mio_jax.losses import _pairs


def test_engine_computes_a_formula_it_has_never_seen():
  # A made-up loss: l_i = s_{i,p(i)} * sum_{k in K(i)} softplus(s_ik / 0.5);
  # the engine must compute it from the formula alone, dense and streamed.
  u1, u2 = random_views(6, 4, 3)
  u = np.concatenate([u1, u2]).astype(np.float64)
  z = u / np.linalg.norm(u, axis=1, keepdims=True)
  sims = z @ z.T
  total = 0.0
  for i in range(8):
    partner = (i + 4) % 8
    negatives = [k for k in range(8) if k not in (i, partner)]
    total += sims[i, partner] * sum(np.logaddexp(0, sims[i, k] / 0.5)
                                    for k in negatives)
  formula = _pairs.PairFormula(
      exclude_partner=True, key_reduction=_pairs.SOFTPLUS_SUM,
      key_temperature=0.5,
      anchor_loss=lambda key_stat, positive_sim, **_: positive_sim * key_stat)
  for block_size in (None, 2):
    np.testing.assert_allclose(
        _pairs.pair_loss(u1, u2, formula, block_size=block_size), total / 8,
        rtol=1e-5)


def test_similarity_matmuls_request_full_precision():
  # TPUs and TF32 GPUs would otherwise round float32 matmul inputs; on CPU
  # the only visible trace is the precision attribute of every dot_general.
  u1, u2 = random_views(2, 4, 3)
  functions = [jax.grad(losses.mio_loss, argnums=(0, 1)),
               functools.partial(losses.pair_metrics, temperature=0.5),
               losses.mio_loss_grad]
  for fn in functions:
    jaxpr = str(jax.make_jaxpr(fn)(u1, u2))
    precisions = re.findall(r"precision=(\S+)", jaxpr)
    assert len(precisions) == jaxpr.count("dot_general[") > 0
    assert all("HIGHEST" in p for p in precisions), precisions


@functools.lru_cache(maxsize=None)
def _jitted_value_and_grads(name, block_size):
  options = options_of(name, temperature=0.1, negative_temperature=0.3,
                       reg_weight=0.5)
  fn = losses.make_loss(name, block_size=block_size, **options)
  return jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_streamed_equals_dense_in_float64(name):
  # Block sizes from 1 (an anchor block meets a key block where every key is
  # masked) to the whole batch (a single block).
  with jax.enable_x64(True):
    u1, u2 = random_views(1, 12, 7, np.float64)
    want_loss, want_grads = _jitted_value_and_grads(name, None)(u1, u2)
    for block_size in (1, 3, 4, 12):
      loss, grads = _jitted_value_and_grads(name, block_size)(u1, u2)
      np.testing.assert_allclose(loss, want_loss, rtol=1e-12)
      for got, want in zip(grads, want_grads):
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", ["mio", "dcl"])
def test_streamed_second_derivatives_equal_dense(name):
  # Hessian-vector products as the Hessian analysis takes them (jvp of
  # grad). Blocks of one image leave an anchor no key in its own image's
  # block (mio and dcl exclude the partner): that must not make them NaN.
  with jax.enable_x64(True):
    u1, u2 = random_views(4, 6, 5, np.float64)
    tangents = random_views(5, 6, 5, np.float64)
    options = options_of(name, temperature=0.3, negative_temperature=0.5,
                         reg_weight=0.5)

    @functools.partial(jax.jit, static_argnums=0)
    def hessian_vector_product(block_size, u1, u2):
      grad = jax.grad(losses.make_loss(name, block_size=block_size,
                                       **options), argnums=(0, 1))
      return jax.jvp(grad, (u1, u2), tangents)[1]

    got = hessian_vector_product(1, u1, u2)
    for got_view, want_view in zip(got, hessian_vector_product(None, u1, u2)):
      assert np.all(np.isfinite(got_view))
      np.testing.assert_allclose(got_view, want_view, rtol=1e-9, atol=1e-12)


def test_streamed_temperature_gradient_equals_dense():
  # The streamed loss writes its own backward pass; a traced temperature
  # (a sweep differentiating through it) must get the dense gradient too.
  with jax.enable_x64(True):
    u1, u2 = random_views(2, 8, 5, np.float64)

    def loss(temperature, block_size):
      return losses.mio_loss(u1, u2, temperature=temperature,
                             block_size=block_size)

    want = jax.grad(loss)(0.3, None)
    for block_size in (2, 4):
      np.testing.assert_allclose(jax.grad(loss)(0.3, block_size), want,
                                 rtol=1e-10)


def test_streamed_degenerate_embeddings_are_finite():
  u1 = np.tile(np.arange(1.0, 5.0, dtype=np.float32), (8, 1))
  for u2 in (u1, -u1):
    for name in ("mio", "bce"):
      loss, grads = _jitted_value_and_grads(name, 2)(u1, u2)
      assert np.isfinite(loss)
      assert all(np.all(np.isfinite(g)) for g in grads)


def test_streaming_bounds_memory():
  # XLA's own count of the temporary buffers of loss + gradients.
  n, d, block_size = 2048, 32, 128
  shape = jax.ShapeDtypeStruct((n, d), jnp.float32)

  def temp_bytes(fn, block):
    compiled = jax.jit(functools.partial(fn, block_size=block)).lower(
        shape, shape).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  loss_grads = jax.grad(losses.mio_loss, argnums=(0, 1))
  metrics = functools.partial(losses.pair_metrics, temperature=0.5)
  for fn in (loss_grads, metrics):
    dense, streamed = temp_bytes(fn, None), temp_bytes(fn, block_size)
    # Dense holds (2N, 2N) float32 matrices (>= 64 MiB); streamed only a few
    # (2b, 2b) blocks and O(N d) vectors.
    assert dense >= (2 * n)**2 * 4
    assert streamed <= 16 * (2 * block_size)**2 * 4 + 16 * n * d * 4, streamed


def test_bad_block_size_raises():
  u1, u2 = random_views(2, 12, 4)
  with pytest.raises(errors.InvalidValueError,
                     match=r"block_size=5 does not divide the batch of 12 "
                     r"images; use a divisor of 12, e.g. block_size=4") as e:
    losses.mio_loss(u1, u2, block_size=5)
  assert e.value.key == "block_size"
  with pytest.raises(errors.InvalidValueError,
                     match="block_size=0 must be None or a positive integer"):
    losses.make_loss("mio", temperature=0.5, block_size=0)
  with pytest.raises(errors.InvalidValueError, match="block_size=5 does not"):
    losses.check_block_size(5, num_images=12)
  losses.check_block_size(3, num_images=24, num_devices=8)


def test_bad_inputs_raise():
  u1, u2 = random_views(3, 4, 3)
  with pytest.raises(errors.InvalidValueError,
                     match="variant='nce' is not one of 'mio', 'bce'"):
    losses.mio_loss(u1, u2, variant="nce")
  with pytest.raises(ValueError, match="same|shape"):
    losses.mio_loss(u1, u2[:3])
  with pytest.raises(ValueError, match="at least 2 images"):
    losses.mio_loss(u1[:1], u2[:1])
