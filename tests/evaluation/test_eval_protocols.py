"""The frozen-feature protocols: one signature, their result keys."""
import numpy as np
import pytest

from eval_data import clusters, sharded
from mio_jax import config_base
from mio_jax import modes

PROTOCOLS = modes.runs(tuple(modes.PROTOCOLS), modes.FROZEN_FEATURES)


def test_every_frozen_feature_protocol_takes_one_signature():
  x, y = clusters(3, 40, 8, spread=0.1, seed=11)
  train, test = sharded(x[:90], y[:90], x[90:], y[90:])
  config = config_base.base_config()
  config.feature_probe.epochs = 5
  config.fewshot.trials = 2
  config.feature_probe.batch_size = 32
  keys = {name: set(protocol(train, test, num_classes=3,
                             settings=config[name], seed=0))
          for name, protocol in PROTOCOLS.items()}
  assert keys == {"knn": {"top1", "top5"}, "fewshot": {"top1", "top1_std"},
                  "feature_probe": {"top1", "top5"}}


def test_knn_protocol_caps_k_at_the_training_set():
  x, y = clusters(2, 10, 4, spread=0.1, seed=12)
  settings = config_base.base_config().knn  # k = 200 > 20 examples
  result = PROTOCOLS["knn"](*sharded(x, y, x, y), num_classes=2,
                            settings=settings, seed=0)
  assert result["top1"] == 1.0


def test_digits_raw_pixels_sanity():
  """All three evaluations on sklearn's digits pixels (a fixed 1500/297 split)."""
  datasets = pytest.importorskip("sklearn.datasets")
  from mio_jax.evaluation import feature_probe_classify, fewshot_probe, knn_classify  # pylint: disable=g-import-not-at-top
  x, y = datasets.load_digits(return_X_y=True)
  order = np.random.default_rng(0).permutation(len(x))
  x, y = x[order].astype(np.float32), y[order]
  train, test = sharded(x[:1500], y[:1500], x[1500:], y[1500:])
  linear = feature_probe_classify(train, test, num_classes=10, epochs=100,
                        learning_rate=0.1, weight_decay=0.0, batch_size=256,
                        seed=0)
  knn_result = knn_classify(train, test, num_classes=10, k=20,
                            temperature=0.07)
  few = fewshot_probe(train, test, num_classes=10, shots=5, trials=5, seed=0)
  print(f"digits pixels: linear {linear}, kNN {knn_result}, 5-shot {few}")
  assert linear["top1"] > 0.95
  assert knn_result["top1"] > 0.95
  assert 0.75 < few["top1"] < 0.95 and few["top1_std"] > 0.0
