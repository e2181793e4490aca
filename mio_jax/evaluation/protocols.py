"""The evaluation protocols by name, all with one signature.

A protocol is

    fn(train: Features, test: Features, *, num_classes: int,
       eval_config: ml_collections.ConfigDict, seed: int) -> dict[str, float]

It reads its hyperparameters from `eval_config` (the run's `config.eval`)
and returns its results without a prefix ({"top1": ...}); `evaluate` names
them "<protocol>_<result>" ("knn_top1", "linear_top5", ...). The mesh is
that of the features (`Features.mesh`).
"""
from typing import Callable, Iterable

import ml_collections

from mio_jax import errors
from mio_jax.evaluation import fewshot
from mio_jax.evaluation import knn
from mio_jax.evaluation import linear
from mio_jax.evaluation.features import Features

Protocol = Callable[..., dict[str, float]]


def knn_protocol(train: Features, test: Features, *, num_classes: int,
                 eval_config: ml_collections.ConfigDict,
                 seed: int) -> dict[str, float]:
  """Weighted kNN (eval.knn_k, capped at the training set; eval.knn_temperature)."""
  del seed  # deterministic
  return knn.knn_classify(train, test, num_classes=num_classes,
                          k=min(eval_config.knn_k, train.num_examples),
                          temperature=eval_config.knn_temperature)


def fewshot_protocol(train: Features, test: Features, *, num_classes: int,
                     eval_config: ml_collections.ConfigDict,
                     seed: int) -> dict[str, float]:
  """The feature probe on eval.fewshot_shots labels per class, eval.fewshot_trials draws."""
  return fewshot.fewshot_probe(train, test, num_classes=num_classes,
                               shots=eval_config.fewshot_shots,
                               trials=eval_config.fewshot_trials, seed=seed)


def linear_protocol(train: Features, test: Features, *, num_classes: int,
                    eval_config: ml_collections.ConfigDict,
                    seed: int) -> dict[str, float]:
  """Feature probe (centre crops, fast): eval.linear_* on precomputed features."""
  return linear.linear_probe(train, test, num_classes=num_classes,
                             epochs=eval_config.linear_epochs,
                             learning_rate=eval_config.linear_lr,
                             weight_decay=eval_config.linear_weight_decay,
                             batch_size=eval_config.linear_batch_size,
                             seed=seed)


# "linear" is the feature probe; the name stays so that results keep their
# keys (linear_top1, linear_top5).
PROTOCOLS: dict[str, Protocol] = {
    "knn": knn_protocol,
    "fewshot": fewshot_protocol,
    "linear": linear_protocol,
}


def check_protocols(names: Iterable[str]) -> None:
  """Raises InvalidValueError for a name not in PROTOCOLS (listing them)."""
  if isinstance(names, str):
    raise TypeError(f"protocols must be a sequence of names, not the string "
                    f"{names!r}; pass ({names!r},).")
  for name in names:
    errors.check_one_of("protocol", name, PROTOCOLS)
