"""The losses on 8 devices equal one device: jit on a sharded batch,
`sharded_mio_loss` inside shard_map, and make_loss / pair_metrics with a
mesh, which split the anchors over the devices."""
import functools
import re

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from loss_testing import LOSS_NAMES, data_mesh, options_of, random_views  # pylint: disable=unused-import
from mio_jax import errors
from mio_jax import losses
from mio_jax import mesh as mesh_lib

# pylint: disable=redefined-outer-name

_SHARDING_OPTIONS = dict(temperature=0.2, negative_temperature=0.4,
                         reg_weight=0.5)


@functools.lru_cache(maxsize=None)
def _jitted_value_and_grads(name, block_size=None, mesh=None):
  fn = losses.make_loss(name, block_size=block_size, mesh=mesh,
                        **options_of(name, **_SHARDING_OPTIONS))
  return jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))


def _assert_close(loss, grads, want_loss, want_grads):
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  for got, want in zip(grads, want_grads):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def _sharded(data_mesh, *arrays):
  sharding = mesh_lib.batch_sharding(data_mesh)
  return [jax.device_put(a, sharding) for a in arrays]


@pytest.mark.parametrize("variant", ["mio", "bce"])
def test_jit_on_sharded_batch_equals_single_device(variant, data_mesh):
  u1, u2 = random_views(21, 32, 16)
  want_loss, want_grads = _jitted_value_and_grads(variant)(u1, u2)
  s1, s2 = _sharded(data_mesh, u1, u2)
  loss, grads = jax.jit(jax.value_and_grad(
      functools.partial(losses.mio_loss, variant=variant, **_SHARDING_OPTIONS),
      argnums=(0, 1)))(s1, s2)
  assert grads[0].sharding.is_equivalent_to(s1.sharding, 2)
  _assert_close(loss, grads, want_loss, want_grads)


@pytest.mark.parametrize("variant", ["mio", "bce"])
def test_shard_map_form_equals_single_device(variant, data_mesh):
  u1, u2 = random_views(22, 32, 16)
  want_loss, want_grads = _jitted_value_and_grads(variant)(u1, u2)
  local_loss = functools.partial(
      losses.sharded_mio_loss, axis_name=mesh_lib.DATA_AXIS, variant=variant,
      **_SHARDING_OPTIONS)
  batch = P(mesh_lib.DATA_AXIS)

  # The loss, and its gradient taken outside shard_map.
  global_loss = jax.jit(jax.shard_map(
      local_loss, mesh=data_mesh, in_specs=(batch, batch), out_specs=P()))
  loss, grads = jax.value_and_grad(global_loss, argnums=(0, 1))(u1, u2)
  _assert_close(loss, grads, want_loss, want_grads)

  # The gradient taken per device inside shard_map (as a train step would):
  # it must flow back through the all-gather of the keys.
  local_grads = jax.jit(jax.shard_map(
      jax.grad(local_loss, argnums=(0, 1)), mesh=data_mesh,
      in_specs=(batch, batch), out_specs=(batch, batch)))(u1, u2)
  for got, want in zip(local_grads, want_grads):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("variant", ["mio", "bce"])
def test_streamed_on_eight_devices_equals_single_device(variant, data_mesh):
  u1, u2 = random_views(3, 32, 8)
  want_loss, want_grads = _jitted_value_and_grads(variant)(u1, u2)
  batch = P(mesh_lib.DATA_AXIS)

  # jit on sharded inputs: the plain function on the global batch.
  loss, grads = _jitted_value_and_grads(variant, 4)(
      *_sharded(data_mesh, u1, u2))
  _assert_close(loss, grads, want_loss, want_grads)

  # shard_map: each device streams its 4 images against the gathered keys,
  # gradient taken per device inside shard_map.
  local_loss = functools.partial(
      losses.sharded_mio_loss, axis_name=mesh_lib.DATA_AXIS, variant=variant,
      block_size=2, **_SHARDING_OPTIONS)
  loss, grads = jax.jit(jax.shard_map(
      jax.value_and_grad(local_loss, argnums=(0, 1)), mesh=data_mesh,
      in_specs=(batch, batch), out_specs=(P(), (batch, batch))))(u1, u2)
  _assert_close(loss, grads, want_loss, want_grads)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_make_loss_with_a_mesh_equals_single_device(name, data_mesh):
  # As the train step calls it: inside jit, on NamedSharding inputs split
  # over the 8 devices (2 images each), dense and streamed one image a time.
  u1, u2 = random_views(23, 16, 8)
  want_loss, want_grads = _jitted_value_and_grads(name)(u1, u2)
  s1, s2 = _sharded(data_mesh, u1, u2)
  for block_size in (None, 1):
    loss, grads = _jitted_value_and_grads(name, block_size, data_mesh)(s1, s2)
    _assert_close(loss, grads, want_loss, want_grads)
    assert grads[0].sharding.is_equivalent_to(s1.sharding, 2)


def test_a_mesh_splits_the_anchors_over_the_devices(data_mesh):
  # 16 images over 8 devices: each device meets its own 2 images' 4 anchor
  # rows with all 32 keys (dense), or loops over its 2 anchor images only,
  # not over all 16 (streamed one image at a time).
  u1, u2 = random_views(24, 16, 8)
  dense = str(jax.make_jaxpr(losses.make_loss(
      "mio", temperature=0.5, mesh=data_mesh))(u1, u2))
  assert "shard_map" in dense
  assert "f32[4,32]" in dense and "f32[32,32]" not in dense
  streamed = str(jax.make_jaxpr(losses.make_loss(
      "mio", temperature=0.5, block_size=1, mesh=data_mesh))(u1, u2))
  loop_lengths = {int(n) for n in re.findall(r"length=(\d+)", streamed)}
  assert loop_lengths == {2, 16}, loop_lengths
  unsplit = str(jax.make_jaxpr(losses.make_loss(
      "mio", temperature=0.5, block_size=1))(u1, u2))
  assert {int(n) for n in re.findall(r"length=(\d+)", unsplit)} == {16}


def test_one_device_mesh_is_the_single_device_loss():
  mesh = mesh_lib.make_data_mesh(jax.devices()[:1])
  u1, u2 = random_views(25, 6, 4)
  with_mesh = losses.make_loss("mio", temperature=0.5, mesh=mesh)
  assert "shard_map" not in str(jax.make_jaxpr(with_mesh)(u1, u2))
  assert with_mesh(u1, u2) == losses.mio_loss(u1, u2, temperature=0.5)


def test_pair_metrics_with_a_mesh_equal_single_device(data_mesh):
  u1, u2 = random_views(26, 16, 6)
  u2 = u1 + 0.7 * u2  # correlated views: accuracies away from 0 and 1
  options = dict(temperature=0.2, negative_temperature=0.4)
  want = losses.pair_metrics(u1, u2, **options)
  s1, s2 = _sharded(data_mesh, u1, u2)
  for block_size in (None, 1):
    got = jax.jit(functools.partial(
        losses.pair_metrics, block_size=block_size, mesh=data_mesh,
        **options))(s1, s2)
    assert set(got) == set(want)
    for key in want:
      np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-7,
                                 err_msg=key)


def test_block_size_must_divide_the_images_per_device(data_mesh):
  u1, u2 = random_views(27, 16, 4)
  loss_fn = losses.make_loss("mio", temperature=0.5, block_size=4,
                             mesh=data_mesh)
  with pytest.raises(errors.InvalidValueError,
                     match=r"block_size=4 does not divide the 2 images per "
                     r"device \(batch 16 over 8 devices\); use a divisor of "
                     r"2, e.g. block_size=2"):
    loss_fn(u1, u2)
  with pytest.raises(errors.InvalidValueError, match="2 images per device"):
    losses.pair_metrics(u1, u2, temperature=0.5, block_size=4, mesh=data_mesh)
  with pytest.raises(ValueError, match="does not split over the 8 devices"):
    losses.make_loss("mio", temperature=0.5, mesh=data_mesh)(u1[:12], u2[:12])
