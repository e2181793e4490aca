"""Checks the losses on this machine's devices in a few seconds.

    python -m mio_jax.cli.selfcheck [--images_per_device=16] [--dim=128]

The unit tests run on CPU; this runs the same equalities on whatever
accelerators JAX sees (one process), where matmul precision and collectives
differ: the closed-form gradient against autodiff, the jit-on-sharded-batch
and shard_map forms and the chunked form against one device, and finite
values at temperature 0.01. Prints one line per check; exits 1 if any fails.
"""
import functools
from typing import List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from mio_jax import losses
from mio_jax import mesh as mesh_lib

# float32 rounding of a few thousand summed terms, with room to spare.
_RTOL = 1e-4
_OPTIONS = dict(temperature=0.2, negative_temperature=0.3, reg_weight=0.5)


def _max_relative_error(got: Sequence[jax.Array],
                        want: Sequence[jax.Array]) -> float:
  got = np.concatenate([np.ravel(np.asarray(g)) for g in got])
  want = np.concatenate([np.ravel(np.asarray(w)) for w in want])
  return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


def run_checks(images_per_device: int, dim: int
               ) -> List[Tuple[str, Optional[float], bool]]:
  """(name, relative error or None, passed) for each check, local devices."""
  mesh = mesh_lib.make_data_mesh(jax.local_devices())
  num_devices = mesh.size
  num_images = images_per_device * num_devices
  rng = np.random.default_rng(0)
  u1, u2 = rng.normal(size=(2, num_images, dim)).astype(np.float32)
  one_device = jax.local_devices()[0]
  value_and_grad = lambda fn: jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))
  results = []

  def check(name: str, got, want) -> None:
    error = _max_relative_error(got, want)
    results.append((name, error, error <= _RTOL))

  for variant in ("mio", "bce"):
    loss_fn = functools.partial(losses.mio_loss, variant=variant, **_OPTIONS)
    single = [jax.device_put(u, one_device) for u in (u1, u2)]
    want_loss, want_grads = value_and_grad(loss_fn)(*single)
    want = [want_loss, *want_grads]

    closed = jax.jit(functools.partial(losses.mio_loss_grad, variant=variant,
                                       **_OPTIONS))(*single)
    check(f"{variant}: closed-form gradient vs autodiff", closed, want_grads)

    sharding = mesh_lib.batch_sharding(mesh)
    sharded = [jax.device_put(u, sharding) for u in (u1, u2)]
    loss, grads = value_and_grad(loss_fn)(*sharded)
    check(f"{variant}: jit on {num_devices} devices vs one", [loss, *grads],
          want)

    batch = P(mesh_lib.DATA_AXIS)
    local_loss = functools.partial(
        losses.sharded_mio_loss, axis_name=mesh_lib.DATA_AXIS,
        variant=variant, **_OPTIONS)
    loss, grads = jax.jit(jax.shard_map(
        jax.value_and_grad(local_loss, argnums=(0, 1)), mesh=mesh,
        in_specs=(batch, batch), out_specs=(P(), (batch, batch))))(*sharded)
    check(f"{variant}: shard_map on {num_devices} devices vs one",
          [loss, *grads], want)

    block_size = max(images_per_device // 2, 1)
    chunked = functools.partial(loss_fn, block_size=block_size)
    loss, grads = value_and_grad(chunked)(*sharded)
    check(f"{variant}: chunked (block {block_size}) vs dense", [loss, *grads],
          want)

    cold = functools.partial(losses.mio_loss, variant=variant,
                             temperature=0.01)
    loss, grads = value_and_grad(cold)(*sharded)
    finite = all(bool(jnp.all(jnp.isfinite(x))) for x in (loss, *grads))
    results.append((f"{variant}: finite at temperature 0.01", None, finite))
  return results
