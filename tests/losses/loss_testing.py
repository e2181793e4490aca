"""Helpers shared by the tests of mio_jax.losses (importable by name)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mio_jax import losses
from mio_jax import mesh as mesh_lib

LOSS_NAMES = ("mio", "bce", "nt_xent", "dcl")
BINARY_LOSSES = ("mio", "bce")


def reference_loss(u1, u2, name, tau_p=0.5, tau_n=None, reg_weight=0.0):
  """Each loss written pair by pair from the formulas, in float64 numpy:
  an independent reference for the engine."""
  tau_n = tau_p if tau_n is None else tau_n
  n, d = u1.shape
  u = np.concatenate([u1, u2]).astype(np.float64)
  z = u / np.linalg.norm(u, axis=1, keepdims=True)
  num_negatives = 2 * n - 2
  total = 0.0
  for i in range(2 * n):
    partner = (i + n) % (2 * n)
    a = z[i] @ z[partner] / tau_p
    negatives = [k for k in range(2 * n) if k not in (i, partner)]
    if name == "mio":
      mean_exp = sum(math.exp(z[i] @ z[k] / tau_n) for k in negatives) / (
          num_negatives)
      total += math.log1p(math.exp(-a)) + math.log1p(mean_exp)
    elif name == "bce":
      total += math.log1p(math.exp(-a)) + sum(
          math.log1p(math.exp(z[i] @ z[k] / tau_n))
          for k in negatives) / num_negatives
    elif name == "nt_xent":
      total += -a + math.log(sum(
          math.exp(z[i] @ z[j] / tau_p) for j in range(2 * n) if j != i))
    elif name == "dcl":
      total += -a + math.log(sum(
          math.exp(z[i] @ z[k] / tau_p) for k in negatives))
  alignment = sum(np.sum((z[m] - z[m + n])**2) for m in range(n)) / (n * d)
  return total / (2 * n) + reg_weight * alignment


def random_views(seed, n, d, dtype=np.float32):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(n, d)).astype(dtype),
          rng.normal(size=(n, d)).astype(dtype))


def call_loss(name, u1, u2, **options):
  return losses.make_loss(name, **options)(jnp.asarray(u1), jnp.asarray(u2))


def options_of(name, *, temperature, negative_temperature, reg_weight):
  """The options `name` takes: all three for mio and bce, else tau only."""
  if name in BINARY_LOSSES:
    return dict(temperature=temperature,
                negative_temperature=negative_temperature,
                reg_weight=reg_weight)
  return dict(temperature=temperature)


def relative_error(got, want):
  got, want = np.concatenate([np.ravel(g) for g in got]), np.concatenate(
      [np.ravel(w) for w in want])
  return np.max(np.abs(got - want)) / np.max(np.abs(want))


@pytest.fixture(scope="module")
def data_mesh():
  """The 8-device data mesh of the fake CPU devices set up by conftest.py."""
  if jax.device_count() < 8:
    pytest.skip("needs the 8 CPU devices set up by conftest.py")
  return mesh_lib.make_data_mesh()
