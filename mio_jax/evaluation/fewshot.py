"""Few-label evaluation: a linear classifier on `shots` labels per class.

We reuse `linear_probe` rather than scikit-learn's LogisticRegression so
that the few-shot and full-label numbers come from the same classifier,
optimiser and standardisation (and run on the accelerator for ImageNet-size
test sets). Features are standardised with the statistics of *all* training
features: those are unlabelled data, which the few-label setting allows, and
a handful of examples per class gives noisy statistics. The result is the
mean and the (population, ddof=0) standard deviation of top-1 over `trials`
random draws of the labelled subset, seeded.
"""
import numpy as np

from mio_jax.evaluation import linear


def sample_fewshot_indices(labels: np.ndarray, *, shots: int,
                           num_classes: int,
                           rng: np.random.Generator) -> np.ndarray:
  """Indices of exactly `shots` examples of each class, drawn without replacement.

  Raises:
    ValueError: if a class has fewer than `shots` examples.
  """
  labels = np.asarray(labels)
  chosen = []
  for label in range(num_classes):
    candidates = np.flatnonzero(labels == label)
    if len(candidates) < shots:
      raise ValueError(
          f"class {label} has {len(candidates)} training examples, fewer than "
          f"shots={shots}; lower eval.fewshot_shots.")
    chosen.append(rng.choice(candidates, size=shots, replace=False))
  return np.concatenate(chosen)


def fewshot_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                  test_y: np.ndarray, *, num_classes: int, shots: int,
                  trials: int, seed: int, epochs: int = 100,
                  learning_rate: float = 0.1, weight_decay: float = 1e-3,
                  batch_size: int = 256) -> dict[str, float]:
  """Mean and std of linear-probe top-1 with `shots` labels per class.

  Args:
    train_x, train_y: the full training features and labels; `shots` labelled
      examples per class are drawn from them per trial.
    test_x, test_y: the test features and labels.
    num_classes: number of classes.
    shots: labelled examples per class (e.g. 5).
    trials: number of random labelled subsets to average over.
    seed: seeds the subset draws and the probes' shuffling.
    epochs, learning_rate, weight_decay, batch_size: of the linear probe;
      batch_size is capped at shots * num_classes.

  Returns:
    {"top1": mean, "top1_std": std} over the trials, fractions in [0, 1].
  """
  if shots < 1 or trials < 1:
    raise ValueError(f"shots and trials must be >= 1; got shots={shots}, "
                     f"trials={trials}.")
  train_x = np.asarray(train_x, np.float32)
  feature_stats = linear.standardization_stats(train_x)
  rng = np.random.default_rng(seed)
  top1s = []
  for trial in range(trials):
    subset = sample_fewshot_indices(train_y, shots=shots,
                                    num_classes=num_classes, rng=rng)
    result = linear.linear_probe(
        train_x[subset], np.asarray(train_y)[subset], test_x, test_y,
        num_classes=num_classes, epochs=epochs, learning_rate=learning_rate,
        weight_decay=weight_decay, batch_size=min(batch_size, len(subset)),
        seed=seed + trial, feature_stats=feature_stats)
    top1s.append(result["top1"])
  return {"top1": float(np.mean(top1s)), "top1_std": float(np.std(top1s))}
