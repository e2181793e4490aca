"""The frozen-feature protocols, all with one signature.

Each is

    fn(train: Features, test: Features, *, num_classes: int,
       settings: ml_collections.ConfigDict, seed: int) -> dict[str, float]

`settings` is its own config section (`config.knn`, `config.fewshot`,
`config.feature_probe`: `config[name]`), as big_vision gives
each evaluator its own `config.evals.<name>`. It returns its results
without a prefix ({"top1": ...}); `evaluate` names them
"<protocol>_<result>" ("knn_top1", "feature_probe_top5", ...). The mesh is
that of the features (`Features.mesh`). Their names and kind are in the one
table of protocols, `modes.PROTOCOLS`.
"""
from typing import Callable

import ml_collections

from mio_jax import errors
from mio_jax.evaluation import feature_probe
from mio_jax.evaluation import fewshot
from mio_jax.evaluation import knn
from mio_jax.evaluation.features import Features

FeatureProtocol = Callable[..., dict[str, float]]


def knn_protocol(train: Features, test: Features, *, num_classes: int,
                 settings: ml_collections.ConfigDict,
                 seed: int) -> dict[str, float]:
  """Weighted kNN (knn.k, capped at the training set; knn.temperature)."""
  del seed  # deterministic
  return knn.knn_classify(train, test, num_classes=num_classes,
                          k=min(settings.k, train.num_examples),
                          temperature=settings.temperature)


def fewshot_protocol(train: Features, test: Features, *, num_classes: int,
                     settings: ml_collections.ConfigDict,
                     seed: int) -> dict[str, float]:
  """The feature probe on fewshot.shots labels per class, fewshot.trials draws."""
  return fewshot.fewshot_probe(train, test, num_classes=num_classes,
                               shots=settings.shots, trials=settings.trials,
                               seed=seed)


def feature_probe_protocol(train: Features, test: Features, *,
                           num_classes: int,
                           settings: ml_collections.ConfigDict,
                           seed: int) -> dict[str, float]:
  """A linear classifier on precomputed centre-crop features (fast)."""
  return feature_probe.feature_probe_classify(
      train, test, num_classes=num_classes, epochs=settings.epochs,
      learning_rate=settings.lr, weight_decay=settings.weight_decay,
      batch_size=settings.batch_size, seed=seed)


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises InvalidValueError (keys relative to config) for a bad section."""
  errors.check_positive("knn.k", config.knn.k)
  errors.check_positive("knn.temperature", config.knn.temperature)
  errors.check_positive("fewshot.shots", config.fewshot.shots)
  errors.check_positive("fewshot.trials", config.fewshot.trials)
  errors.check_positive("feature_probe.epochs", config.feature_probe.epochs)
  errors.check_positive("feature_probe.lr", config.feature_probe.lr)
  errors.check_positive("feature_probe.weight_decay",
                        config.feature_probe.weight_decay, allow_zero=True)
  errors.check_positive("feature_probe.batch_size",
                        config.feature_probe.batch_size)
