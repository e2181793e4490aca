"""The streamed (block_size) losses equal the dense ones and stay small."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mio_jax import losses
from mio_jax import mesh as mesh_lib


def _views(seed, n, d, dtype=np.float32):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(n, d)).astype(dtype),
          rng.normal(size=(n, d)).astype(dtype))


def _options(name):
  if name in ("mio", "bce"):
    return dict(temperature=0.1, negative_temperature=0.3, reg_weight=0.5)
  return dict(temperature=0.1)


@functools.lru_cache(maxsize=None)
def _jitted_value_and_grads(name, block_size):
  fn = losses.make_loss(name, block_size=block_size, **_options(name))
  return jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))


def _value_and_grads(name, u1, u2, block_size):
  return _jitted_value_and_grads(name, block_size)(u1, u2)


@pytest.mark.parametrize("name", ["mio", "bce", "nt_xent", "dcl"])
def test_streamed_equals_dense_in_float64(name):
  # Block sizes from 1 (an anchor block meets a key block where every key is
  # masked) to the whole batch (a single block).
  with jax.enable_x64(True):
    u1, u2 = _views(1, 12, 7, np.float64)
    want_loss, want_grads = _value_and_grads(name, u1, u2, None)
    for block_size in (1, 3, 4, 12):
      loss, grads = _value_and_grads(name, u1, u2, block_size)
      np.testing.assert_allclose(loss, want_loss, rtol=1e-12)
      for got, want in zip(grads, want_grads):
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-14)


def test_streamed_pair_metrics_equal_dense():
  u1, u2 = _views(4, 12, 6)
  u2 = u1 + 0.7 * u2  # correlated views: accuracies away from 0 and 1
  want = losses.pair_metrics(u1, u2, temperature=0.2, negative_temperature=0.4)
  for block_size in (1, 4):
    got = losses.pair_metrics(u1, u2, temperature=0.2,
                              negative_temperature=0.4, block_size=block_size)
    assert set(got) == set(want)
    for key in want:
      np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-7,
                                 err_msg=key)


def test_streamed_degenerate_embeddings_are_finite():
  u1 = np.tile(np.arange(1.0, 5.0, dtype=np.float32), (8, 1))
  for u2 in (u1, -u1):
    for name in ("mio", "bce"):
      loss, grads = _value_and_grads(name, u1, u2, 2)
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
  u1, u2 = _views(2, 12, 4)
  with pytest.raises(ValueError, match="block_size=5 must be a positive "
                     "integer dividing"):
    losses.mio_loss(u1, u2, block_size=5)
  with pytest.raises(ValueError, match="block_size must be None or a positive"):
    losses.make_loss("mio", temperature=0.5, block_size=0)


@pytest.fixture(scope="module")
def data_mesh():
  if jax.device_count() < 8:
    pytest.skip("needs the 8 CPU devices set up by conftest.py")
  return mesh_lib.make_data_mesh()


@pytest.mark.parametrize("variant", ["mio", "bce"])
def test_streamed_on_eight_devices_equals_single_device(variant, data_mesh):
  u1, u2 = _views(3, 32, 8)
  want_loss, want_grads = _value_and_grads(variant, u1, u2, None)
  batch = P(mesh_lib.DATA_AXIS)

  # jit on sharded inputs: the plain function on the global batch.
  sharding = mesh_lib.batch_sharding(data_mesh)
  loss, grads = _value_and_grads(variant, jax.device_put(u1, sharding),
                                 jax.device_put(u2, sharding), 4)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  for got, want in zip(grads, want_grads):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)

  # shard_map: each device streams its 4 images against the gathered keys,
  # gradient taken per device inside shard_map.
  local_loss = functools.partial(
      losses.sharded_mio_loss, axis_name=mesh_lib.DATA_AXIS, variant=variant,
      block_size=2, **_options(variant))
  loss, grads = jax.jit(jax.shard_map(
      jax.value_and_grad(local_loss, argnums=(0, 1)), mesh=data_mesh,
      in_specs=(batch, batch), out_specs=(P(), (batch, batch))))(u1, u2)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  for got, want in zip(grads, want_grads):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
