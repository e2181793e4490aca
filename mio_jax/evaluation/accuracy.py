"""Top-k accuracy and input checks shared by the linear probe and kNN."""
import jax
import jax.numpy as jnp
import numpy as np

# The paper reports top-1 and top-5; with fewer than 5 classes "top5" is
# top-num_classes (trivially 1.0), which keeps the result keys stable.
REPORTED_TOP_K = 5


def top5_k(num_classes: int) -> int:
  """The k used for the "top5" result: min(5, num_classes)."""
  return min(REPORTED_TOP_K, num_classes)


def topk_hits(scores: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """Whether each row's label is among its k highest scores.

  Args:
    scores: (n, num_classes) logits or class votes.
    labels: (n,) int labels.
    k: how many top classes count as a hit.

  Returns:
    (n,) bool. Ties are broken towards the lower class index (lax.top_k).
  """
  _, top_classes = jax.lax.top_k(scores, k)
  return jnp.any(top_classes == labels[:, None], axis=1)


def check_features_and_labels(name: str, features, labels,
                              num_classes: int) -> None:
  """Raises ValueError naming `name` if shapes or label values are invalid."""
  if features.ndim != 2:
    raise ValueError(f"{name}_x must be 2-D (examples, feature_dim); got shape "
                     f"{features.shape}.")
  if labels.shape != (features.shape[0],):
    raise ValueError(f"{name}_y must have shape ({features.shape[0]},) to match "
                     f"{name}_x; got {labels.shape}.")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(
        f"{name}_y holds labels in [{labels.min()}, {labels.max()}] but "
        f"num_classes={num_classes}; labels must lie in [0, num_classes).")


def as_train_test(train_x, train_y, test_x, test_y, num_classes: int):
  """float32 features and int32 labels, checked; raises ValueError naming the bad input."""
  train_x = np.asarray(train_x, np.float32)
  test_x = np.asarray(test_x, np.float32)
  train_y = np.asarray(train_y).astype(np.int32)
  test_y = np.asarray(test_y).astype(np.int32)
  check_features_and_labels("train", train_x, train_y, num_classes)
  check_features_and_labels("test", test_x, test_y, num_classes)
  if test_x.shape[1] != train_x.shape[1]:
    raise ValueError(f"test_x has {test_x.shape[1]} features per example but "
                     f"train_x has {train_x.shape[1]}.")
  return train_x, train_y, test_x, test_y
