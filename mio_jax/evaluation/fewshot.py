"""Few-label evaluation: a linear classifier on `shots` labels per class.

We reuse `feature_probe_classify` rather than scikit-learn's LogisticRegression so
that the few-shot and full-label numbers come from the same classifier,
optimiser and standardisation (and run on the accelerator for ImageNet-size
test sets), data-parallel on the sharded test features. Only the small
labelled subset is copied out of the training shards (`features.take`).
Features are standardised with the statistics of *all* training
features: those are unlabelled data, which the few-label setting allows, and
a handful of examples per class gives noisy statistics. The result is the
mean and the (population, ddof=0) standard deviation of top-1 over `trials`
random draws of the labelled subset, seeded.
"""
import numpy as np

from mio_jax import errors
from mio_jax.evaluation import features as features_lib
from mio_jax.evaluation import feature_probe as feature_probe_lib
from mio_jax.evaluation.features import Features


def sample_fewshot_indices(labels: np.ndarray, *, shots: int,
                           num_classes: int,
                           rng: np.random.Generator) -> np.ndarray:
  """Indices of exactly `shots` examples of each class, drawn without replacement.

  Raises:
    InvalidValueError: if a class has fewer than `shots` examples.
  """
  labels = np.asarray(labels)
  chosen = []
  for label in range(num_classes):
    candidates = np.flatnonzero(labels == label)
    if len(candidates) < shots:
      raise errors.InvalidValueError(
          "shots", shots, f"is too many: class {label} has "
          f"{len(candidates)} training examples", "lower fewshot.shots")
    chosen.append(rng.choice(candidates, size=shots, replace=False))
  return np.concatenate(chosen)


def fewshot_probe(train: Features, test: Features, *, num_classes: int,
                  shots: int, trials: int, seed: int, epochs: int = 100,
                  learning_rate: float = 0.1, weight_decay: float = 1e-3,
                  batch_size: int = 256) -> dict[str, float]:
  """Mean and std of the feature probe's top-1 with `shots` labels per class.

  Args:
    train: the full training features; `shots` labelled examples per class
      are drawn from them per trial (in the split's order, so the draws do
      not depend on the device count).
    test: the test features.
    num_classes: number of classes.
    shots: labelled examples per class (e.g. 5).
    trials: number of random labelled subsets to average over.
    seed: seeds the subset draws and the probes' shuffling.
    epochs, learning_rate, weight_decay, batch_size: of the feature probe;
      batch_size is capped at shots * num_classes.

  Returns:
    {"top1": mean, "top1_std": std} over the trials, fractions in [0, 1].

  Raises:
    InvalidValueError: shots or trials < 1, or a class has fewer than
    `shots` examples.
  """
  if shots < 1:
    raise errors.InvalidValueError("shots", shots, "must be >= 1",
                                   "raise fewshot.shots")
  if trials < 1:
    raise errors.InvalidValueError("trials", trials, "must be >= 1",
                                   "raise fewshot.trials")
  feature_stats = feature_probe_lib.standardization_stats(train)
  labels, rows = features_lib.dataset_order(train)
  rng = np.random.default_rng(seed)
  top1s = []
  for trial in range(trials):
    subset = sample_fewshot_indices(labels, shots=shots,
                                    num_classes=num_classes, rng=rng)
    result = feature_probe_lib.feature_probe_classify(
        features_lib.take(train, rows[subset]), test,
        num_classes=num_classes, epochs=epochs, learning_rate=learning_rate,
        weight_decay=weight_decay, batch_size=min(batch_size, len(subset)),
        seed=seed + trial, feature_stats=feature_stats)
    top1s.append(result["top1"])
  return {"top1": float(np.mean(top1s)), "top1_std": float(np.std(top1s))}
