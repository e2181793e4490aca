"""Tests of mio_jax.losses: hand-computed values, closed-form gradients,
invariances, numerical stability, multi-device equality, registry errors and
pair metrics."""
import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mio_jax import losses
from mio_jax import mesh as mesh_lib
from mio_jax import selfcheck


# ---- an independent reference: explicit loops over pairs, in numpy -----------


def _reference_loss(u1, u2, name, tau_p=0.5, tau_n=None, reg_weight=0.0):
  """Each loss written pair by pair from the formulas, in float64."""
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


def _random_views(seed, n, d, dtype=np.float32):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(n, d)).astype(dtype),
          rng.normal(size=(n, d)).astype(dtype))


def _call(name, u1, u2, **options):
  return losses.make_loss(name, **options)(jnp.asarray(u1), jnp.asarray(u2))


# ---- hand-computed values ----------------------------------------------------


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
    np.testing.assert_allclose(_call(name, u, u, temperature=0.5), value,
                               rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("name", ["mio", "bce", "nt_xent", "dcl"])
@pytest.mark.parametrize("n,d", [(2, 2), (3, 5)])
def test_matches_pairwise_reference(name, n, d):
  u1, u2 = _random_views(n * 10 + d, n, d)
  options = {"temperature": 0.3}
  if name in ("mio", "bce"):
    options.update(negative_temperature=0.7, reg_weight=0.4)
  expected = _reference_loss(u1, u2, name, 0.3, options.get(
      "negative_temperature"), options.get("reg_weight", 0.0))
  np.testing.assert_allclose(_call(name, u1, u2, **options), expected,
                             rtol=1e-5)


def test_mio_is_an_upper_bound_of_bce_negative_term():
  # Jensen: the mio negative term majorises the bce one, positive terms equal.
  u1, u2 = _random_views(0, 8, 4)
  for tau in (0.1, 0.5, 2.0):
    assert (_call("mio", u1, u2, temperature=tau)
            >= _call("bce", u1, u2, temperature=tau) - 1e-6)


def test_bfloat16_inputs_give_float32_loss():
  u1, u2 = _random_views(1, 8, 16)
  low = losses.mio_loss(jnp.asarray(u1, jnp.bfloat16),
                        jnp.asarray(u2, jnp.bfloat16))
  assert low.dtype == jnp.float32
  rounded = losses.mio_loss(
      jnp.asarray(u1, jnp.bfloat16).astype(jnp.float32),
      jnp.asarray(u2, jnp.bfloat16).astype(jnp.float32))
  np.testing.assert_allclose(low, rounded, rtol=1e-6)


def test_similarity_matmuls_request_full_precision():
  # TPUs and TF32 GPUs would otherwise round float32 matmul inputs; on CPU
  # the only visible trace is the precision attribute of every dot_general.
  u1, u2 = _random_views(2, 4, 3)
  functions = [jax.grad(losses.mio_loss, argnums=(0, 1)),
               functools.partial(losses.pair_metrics, temperature=0.5),
               losses.mio_loss_grad]
  for fn in functions:
    jaxpr = str(jax.make_jaxpr(fn)(u1, u2))
    precisions = re.findall(r"precision=(\S+)", jaxpr)
    assert len(precisions) == jaxpr.count("dot_general[") > 0
    assert all("HIGHEST" in p for p in precisions), precisions


# ---- closed-form gradients against jax.grad (float64) ------------------------

# (tau_p, tau_n, lambda): the three temperatures, unequal ones, a regulariser.
_GRAD_SETTINGS = [(0.05, 0.05, 0.0), (0.5, 0.5, 0.0), (1.0, 1.0, 0.0),
                  (0.5, 0.1, 0.0), (0.05, 1.0, 0.3), (0.5, 0.5, 2.0)]


@functools.lru_cache(maxsize=None)
def _jitted_grads(variant):
  """(autodiff, closed form) gradients, jitted once per variant (and shape)."""
  def autodiff(u1, u2, tau_p, tau_n, lam):
    return jax.grad(
        functools.partial(losses.mio_loss, variant=variant, temperature=tau_p,
                          negative_temperature=tau_n, reg_weight=lam),
        argnums=(0, 1))(u1, u2)

  def closed(u1, u2, tau_p, tau_n, lam):
    return losses.mio_loss_grad(u1, u2, variant=variant, temperature=tau_p,
                                negative_temperature=tau_n, reg_weight=lam)
  return jax.jit(autodiff), jax.jit(closed)


def _relative_error(got, want):
  got, want = np.concatenate([np.ravel(g) for g in got]), np.concatenate(
      [np.ravel(w) for w in want])
  return np.max(np.abs(got - want)) / np.max(np.abs(want))


@pytest.mark.parametrize("variant", ["mio", "bce"])
@pytest.mark.parametrize("n", [2, 3, 16, 64])
@pytest.mark.parametrize("d", [1, 8, 128])
def test_closed_form_gradient_matches_autodiff(variant, n, d):
  with jax.enable_x64(True):
    u1, u2 = _random_views(n * 1000 + d, n, d, np.float64)
    # Rows of unequal norms exercise the 1/||u|| of the normalisation.
    u1 *= np.linspace(0.2, 5.0, n)[:, None]
    autodiff, closed = _jitted_grads(variant)
    for tau_p, tau_n, lam in _GRAD_SETTINGS:
      want = autodiff(u1, u2, tau_p, tau_n, lam)
      got = closed(u1, u2, tau_p, tau_n, lam)
      assert got[0].dtype == jnp.float64
      if d == 1:
        # Unit vectors in 1-D are +-1: no direction to move, both are ~0.
        assert np.max(np.abs(np.concatenate(got + want))) <= 1e-12
        continue
      error = _relative_error(got, want)
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

    want_w, want_c = jax.grad(loss_of_layer, argnums=(0, 1))(weight, bias)
    g1, g2 = losses.mio_loss_grad(h1 @ weight.T + bias, h2 @ weight.T + bias,
                                  **options)
    # dL/dW = sum_i dL/du_i h_i^T, dL/dc = sum_i dL/du_i over both views.
    got_w = g1.T @ h1 + g2.T @ h2
    got_c = g1.sum(0) + g2.sum(0)
    assert _relative_error([got_w, got_c], [want_w, want_c]) <= 1e-10


def test_closed_form_gradient_of_a_zero_row_matches_autodiff():
  with jax.enable_x64(True):
    u1, u2 = _random_views(3, 4, 3, np.float64)
    u1[2] = 0.0
    want = jax.grad(losses.mio_loss, argnums=(0, 1))(u1, u2)
    got = losses.mio_loss_grad(u1, u2)
    assert np.all(np.isfinite(np.concatenate(want)))
    assert _relative_error(got, want) <= 1e-10


# ---- invariances -------------------------------------------------------------


@pytest.mark.parametrize("name", ["mio", "bce", "nt_xent", "dcl"])
def test_invariances(name):
  u1, u2 = _random_views(11, 12, 6)
  options = {"temperature": 0.2}
  if name in ("mio", "bce"):
    options.update(negative_temperature=0.3, reg_weight=0.5)
  base = _call(name, u1, u2, **options)
  rng = np.random.default_rng(12)
  permutation = rng.permutation(12)
  scales = rng.uniform(0.01, 100.0, size=(2, 12, 1)).astype(np.float32)
  np.testing.assert_allclose(_call(name, u2, u1, **options), base, rtol=1e-5)
  np.testing.assert_allclose(
      _call(name, u1[permutation], u2[permutation], **options), base,
      rtol=1e-5)
  np.testing.assert_allclose(
      _call(name, u1 * scales[0], u2 * scales[1], **options), base, rtol=1e-5)


# ---- numerical stability -----------------------------------------------------


@pytest.mark.parametrize("variant", ["mio", "bce"])
def test_large_batch_low_temperature_is_finite(variant):
  u1, u2 = _random_views(5, 4096, 128)
  loss, grads = jax.jit(jax.value_and_grad(
      functools.partial(losses.mio_loss, variant=variant, temperature=0.01),
      argnums=(0, 1)))(u1, u2)
  assert np.isfinite(loss)
  assert all(np.all(np.isfinite(g)) for g in grads)


@pytest.mark.parametrize("name", ["mio", "bce", "nt_xent", "dcl"])
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


# ---- several devices ---------------------------------------------------------


@pytest.fixture(scope="module")
def data_mesh():
  if jax.device_count() < 8:
    pytest.skip("needs the 8 CPU devices set up by conftest.py")
  return mesh_lib.make_data_mesh()


_SHARDING_OPTIONS = dict(temperature=0.2, negative_temperature=0.4,
                         reg_weight=0.5)


def _dense_value_and_grads(variant, u1, u2):
  return jax.jit(jax.value_and_grad(
      functools.partial(losses.mio_loss, variant=variant, **_SHARDING_OPTIONS),
      argnums=(0, 1)))(u1, u2)


@pytest.mark.parametrize("variant", ["mio", "bce"])
def test_jit_on_sharded_batch_equals_single_device(variant, data_mesh):
  u1, u2 = _random_views(21, 32, 16)
  want_loss, want_grads = _dense_value_and_grads(variant, u1, u2)
  sharding = mesh_lib.batch_sharding(data_mesh)
  s1, s2 = jax.device_put(u1, sharding), jax.device_put(u2, sharding)
  loss, grads = jax.jit(jax.value_and_grad(
      functools.partial(losses.mio_loss, variant=variant, **_SHARDING_OPTIONS),
      argnums=(0, 1)))(s1, s2)
  assert grads[0].sharding.is_equivalent_to(sharding, 2)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  for got, want in zip(grads, want_grads):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("variant", ["mio", "bce"])
def test_shard_map_form_equals_single_device(variant, data_mesh):
  u1, u2 = _random_views(22, 32, 16)
  want_loss, want_grads = _dense_value_and_grads(variant, u1, u2)
  local_loss = functools.partial(
      losses.sharded_mio_loss, axis_name=mesh_lib.DATA_AXIS, variant=variant,
      **_SHARDING_OPTIONS)
  batch = P(mesh_lib.DATA_AXIS)

  # The loss, and its gradient taken outside shard_map.
  global_loss = jax.jit(jax.shard_map(
      local_loss, mesh=data_mesh, in_specs=(batch, batch), out_specs=P()))
  loss, grads = jax.value_and_grad(global_loss, argnums=(0, 1))(u1, u2)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  for got, want in zip(grads, want_grads):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)

  # The gradient taken per device inside shard_map (as a train step would):
  # it must flow back through the all-gather of the keys.
  local_grads = jax.jit(jax.shard_map(
      jax.grad(local_loss, argnums=(0, 1)), mesh=data_mesh,
      in_specs=(batch, batch), out_specs=(batch, batch)))(u1, u2)
  for got, want in zip(local_grads, want_grads):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_selfcheck_passes_on_cpu_devices(data_mesh):
  results = selfcheck.run_checks(images_per_device=2, dim=8)
  assert len(results) == 10
  failed = [name for name, _, passed in results if not passed]
  assert not failed, failed


# ---- registry and errors -----------------------------------------------------


def test_registry_builds_each_loss():
  assert set(losses.LOSSES) == {"mio", "bce", "nt_xent", "dcl"}
  u1, u2 = _random_views(2, 4, 3)
  np.testing.assert_allclose(
      _call("bce", u1, u2, temperature=0.3, negative_temperature=0.6,
            reg_weight=0.1),
      losses.mio_loss(u1, u2, variant="bce", temperature=0.3,
                      negative_temperature=0.6, reg_weight=0.1))
  np.testing.assert_allclose(_call("dcl", u1, u2, temperature=0.3),
                             losses.dcl_loss(u1, u2, temperature=0.3))


@pytest.mark.parametrize("name,options,message", [
    ("simclr", {"temperature": 0.5}, "valid names: mio, bce, nt_xent, dcl"),
    ("mio", {"temperature": 0.0}, "temperature must be > 0"),
    ("bce", {"temperature": 0.5, "negative_temperature": -1.0},
     "negative_temperature must be > 0"),
    ("mio", {"temperature": 0.5, "reg_weight": -1.0},
     "reg_weight must be >= 0"),
    ("nt_xent", {"temperature": 0.5, "reg_weight": 0.1}, "reg_weight=0.1"),
    ("dcl", {"temperature": 0.5, "negative_temperature": 0.2},
     "negative_temperature=0.2"),
])
def test_make_loss_errors(name, options, message):
  with pytest.raises(ValueError, match=message):
    losses.make_loss(name, **options)


def test_bad_inputs_raise():
  u1, u2 = _random_views(3, 4, 3)
  with pytest.raises(ValueError, match="variant must be 'mio' or 'bce'"):
    losses.mio_loss(u1, u2, variant="nce")
  with pytest.raises(ValueError, match="same|shape"):
    losses.mio_loss(u1, u2[:3])
  with pytest.raises(ValueError, match="at least 2 images"):
    losses.mio_loss(u1[:1], u2[:1])


# ---- pair metrics ------------------------------------------------------------


def test_pair_metrics_on_perfectly_separated_embeddings():
  # Views identical; images at the vertices of a centred simplex, so every
  # negative similarity is -1/(N - 1) < 0 and every positive one is 1.
  n, tau = 6, 0.5
  u = np.eye(n, dtype=np.float32) - 1.0 / n
  metrics = losses.pair_metrics(u, u, temperature=tau)
  np.testing.assert_allclose(metrics["pos_sim"], 1.0, rtol=1e-6)
  np.testing.assert_allclose(metrics["neg_sim"], -1 / (n - 1), rtol=1e-5)
  for key in ("pos_accuracy", "neg_accuracy", "pair_accuracy"):
    assert metrics[key] == 1.0, key
  # Donsker-Varadhan: mean positive critic minus log mean exp negative critic.
  np.testing.assert_allclose(metrics["mi_estimate"],
                             1 / tau + 1 / ((n - 1) * tau), rtol=1e-5)


def test_pair_metrics_on_swapped_positives():
  # View 2 = -view 1: every positive pair is antipodal (all misclassified),
  # and the negatives of image k come as +-pairs (z_k and -z_k), so exactly
  # half of them are misclassified and their mean similarity is 0.
  u1, _ = _random_views(4, 8, 32)
  metrics = losses.pair_metrics(u1, -u1, temperature=0.5,
                                negative_temperature=0.25)
  np.testing.assert_allclose(metrics["pos_sim"], -1.0, rtol=1e-6)
  np.testing.assert_allclose(metrics["neg_sim"], 0.0, atol=1e-7)
  assert metrics["pos_accuracy"] == 0.0
  assert metrics["neg_accuracy"] == 0.5
  assert metrics["pair_accuracy"] == 0.25
  # Mean positive critic -2; log mean exp of a mean-zero critic is >= 0.
  assert metrics["mi_estimate"] <= -2.0
