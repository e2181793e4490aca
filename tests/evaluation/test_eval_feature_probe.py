"""The feature probe (`linear`): learns, seeded, checks inputs, data parallel."""
import jax
import numpy as np
import pytest

import dense_reference
from eval_data import clusters, sharded
from mio_jax import mesh as mesh_lib
from mio_jax.evaluation import feature_probe
from mio_jax.evaluation import feature_probe_classify

_PROBE = dict(epochs=30, learning_rate=0.1, weight_decay=0.0, batch_size=64)


def test_feature_probe_separable_data_is_solved():
  x, y = clusters(4, 100, 16, spread=0.05, seed=0)
  # Offset and scale the features: standardisation must undo it.
  x = 100.0 + 50.0 * x
  result = feature_probe_classify(*sharded(x[:300], y[:300], x[300:], y[300:]),
                        num_classes=4, seed=0, **_PROBE)
  assert result["top1"] == 1.0
  assert result["top5"] == 1.0  # top-min(5, 4)


def test_feature_probe_random_labels_is_chance():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2000, 32)).astype(np.float32)
  y = rng.integers(0, 10, size=2000)
  result = feature_probe_classify(*sharded(x[:1000], y[:1000], x[1000:], y[1000:]),
                        num_classes=10, seed=0, **_PROBE)
  assert 0.05 < result["top1"] < 0.16
  assert 0.4 < result["top5"] < 0.6


def test_feature_probe_is_deterministic_and_seeded():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(600, 8)).astype(np.float32)
  y = rng.integers(0, 3, size=600)
  train, test = sharded(x[:200], y[:200], x[200:], y[200:])
  run = lambda seed: feature_probe_classify(train, test, num_classes=3, seed=seed,
                                  epochs=3, learning_rate=0.5,
                                  weight_decay=0.0, batch_size=16)
  assert run(0) == run(0)
  assert run(0) != run(1)  # the shuffling (hence the classifier) changes


def test_feature_probe_rejects_bad_inputs():
  x = np.zeros((10, 4), np.float32)
  y = np.zeros(10, int)
  with pytest.raises(ValueError, match="batch_size"):
    feature_probe_classify(*sharded(x, y, x, y), num_classes=2, seed=0, epochs=1,
                 learning_rate=0.1, weight_decay=0.0, batch_size=11)
  with pytest.raises(ValueError, match="num_classes"):
    feature_probe_classify(*sharded(x, y + 2, x, y), num_classes=2, seed=0, **_PROBE)


def test_standardization_ignores_padding_rows():
  x = np.arange(30, dtype=np.float32).reshape(10, 3)  # 10 rows -> 16 on 8
  features = sharded(x, np.zeros(10, int))
  assert features.x.shape[0] == 16
  mean, scale = feature_probe.standardization_stats(features)
  np.testing.assert_allclose(mean, x.mean(0), rtol=1e-6)
  np.testing.assert_allclose(scale, x.std(0), rtol=1e-5)


def test_full_batch_probe_matches_the_dense_probe_on_8_devices():
  """One step per epoch over every example: no shuffling, same mathematics.

  The data-parallel classifier (rows on 8 devices, gradients all-reduced)
  equals today's dense one to float32 rounding, and so do the accuracies.
  """
  x, y = clusters(5, 40, 12, spread=0.8, seed=7)  # 200 rows: 25 per device
  x = 3.0 + 2.0 * x
  args = dict(num_classes=5, epochs=20, learning_rate=0.5, weight_decay=1e-3)
  dense_params, _, _ = dense_reference.train_linear(
      x[:160], y[:160], jax.random.key(0), np.float32(0.5), np.float32(1e-3),
      num_classes=5, epochs=20, batch_size=160)
  train, test = sharded(x[:160], y[:160], x[160:], y[160:])
  params = feature_probe.train_classifier(
      train, batch_size=160, seed=0,
      feature_stats=feature_probe.standardization_stats(train), **args)
  for name in ("kernel", "bias"):
    np.testing.assert_allclose(params[name], dense_params[name], rtol=2e-4,
                               atol=2e-5)
  assert feature_probe_classify(train, test, batch_size=160, seed=0, **args) == (
      dense_reference.feature_probe_classify(x[:160], y[:160], x[160:], y[160:],
                                   batch_size=160, seed=0, **args))


def test_minibatch_probe_matches_the_dense_probe_within_shuffling_noise():
  """Mini-batches: the shuffles differ (per device), the accuracy does not."""
  x, y = clusters(10, 150, 32, spread=0.6, seed=8)  # 1,000 train, 500 test
  args = dict(num_classes=10, epochs=10, learning_rate=0.1, weight_decay=0.0,
              batch_size=64, seed=0)
  dense = dense_reference.feature_probe_classify(x[:1000], y[:1000], x[1000:],
                                       y[1000:], **args)
  for mesh in (mesh_lib.make_data_mesh(jax.devices()[:1]),
               mesh_lib.make_data_mesh()):
    result = feature_probe_classify(*sharded(x[:1000], y[:1000], x[1000:], y[1000:],
                                   mesh=mesh), **args)
    assert 0.3 < dense["top1"] < 0.95  # neither trivial nor saturated
    assert result["top1"] == pytest.approx(dense["top1"], abs=0.02)
    assert result["top5"] == pytest.approx(dense["top5"], abs=0.02)
