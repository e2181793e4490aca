"""Linear evaluation: softmax regression on frozen, precomputed features.

The paper's protocol (as in SimCLR/BYOL): the encoder is frozen and a linear
classifier is trained on its pooled features; we report top-1 and top-5 on the
test split. Choices here, and why:
  * Features are standardised per dimension with statistics of the *training*
    features (no test statistics leak). This makes one learning rate work
    across encoders whose feature scales differ by orders of magnitude.
    Dimensions with (near) zero variance keep scale 1, as scikit-learn's
    StandardScaler does, so they cannot blow up test features.
  * SGD with Nesterov momentum 0.9, a cosine learning-rate decay to zero over
    all steps, L2 weight decay on the weights (not the bias), zero init.
  * Each epoch is a fresh permutation; the last incomplete batch is dropped
    (a different permutation next epoch uses those examples), so every step
    has the same shape and the whole run is one jit: lax.scan over epochs of
    lax.scan over batches. Deterministic given `seed`.
The training features live on one device: 1.28M x 512 float32 is 2.6 GB.
"""
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mio_jax.evaluation import accuracy

# Below this standard deviation a feature is treated as constant (scale 1).
_MIN_FEATURE_STD = 1e-6
_MOMENTUM = 0.9


@jax.jit
def standardization_stats(features: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-dimension (mean, scale) of `features` (n, d); scale 1 if constant."""
  features = jnp.asarray(features, jnp.float32)
  mean = jnp.mean(features, axis=0)
  std = jnp.std(features, axis=0)
  return mean, jnp.where(std < _MIN_FEATURE_STD, 1.0, std)


def _logits(params, features, mean, scale):
  return ((features - mean) / scale) @ params["kernel"] + params["bias"]


@functools.partial(
    jax.jit, static_argnames=("num_classes", "epochs", "batch_size"))
def _train_linear(train_x, train_y, mean, scale, key, learning_rate,
                  weight_decay, *, num_classes, epochs, batch_size):
  """Trains the linear classifier; returns its params {"kernel", "bias"}."""
  num_examples, feature_dim = train_x.shape
  steps_per_epoch = num_examples // batch_size
  schedule = optax.cosine_decay_schedule(learning_rate,
                                         epochs * steps_per_epoch)
  optimizer = optax.chain(
      optax.add_decayed_weights(weight_decay,
                                mask={"kernel": True, "bias": False}),
      optax.sgd(schedule, momentum=_MOMENTUM, nesterov=True))
  params = {"kernel": jnp.zeros((feature_dim, num_classes), jnp.float32),
            "bias": jnp.zeros((num_classes,), jnp.float32)}

  def loss_fn(params, features, labels):
    logits = _logits(params, features, mean, scale)
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, labels).mean()

  def train_step(carry, batch_indices):
    params, opt_state = carry
    grads = jax.grad(loss_fn)(params, train_x[batch_indices],
                              train_y[batch_indices])
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None

  def train_epoch(carry, epoch_key):
    order = jax.random.permutation(epoch_key, num_examples)
    batches = order[:steps_per_epoch * batch_size].reshape(
        steps_per_epoch, batch_size)
    carry, _ = jax.lax.scan(train_step, carry, batches)
    return carry, None

  (params, _), _ = jax.lax.scan(train_epoch,
                                (params, optimizer.init(params)),
                                jax.random.split(key, epochs))
  return params


@functools.partial(jax.jit, static_argnames=("top5_k",))
def _count_hits(params, mean, scale, test_x, test_y, *, top5_k):
  logits = _logits(params, test_x, mean, scale)
  return (jnp.sum(accuracy.topk_hits(logits, test_y, 1)),
          jnp.sum(accuracy.topk_hits(logits, test_y, top5_k)))


def linear_probe(train_x: np.ndarray, train_y: np.ndarray,
                 test_x: np.ndarray, test_y: np.ndarray, *,
                 num_classes: int, epochs: int, learning_rate: float,
                 weight_decay: float, batch_size: int, seed: int,
                 feature_stats: Optional[tuple[jax.Array, jax.Array]] = None,
                 ) -> dict[str, float]:
  """Trains a linear classifier on train features, scores it on test features.

  Args:
    train_x: (n, d) float features of the labelled training examples.
    train_y: (n,) int labels in [0, num_classes).
    test_x: (m, d) float features of the test examples.
    test_y: (m,) int labels.
    num_classes: number of classes.
    epochs: passes over the training set (>= 1).
    learning_rate: peak SGD learning rate (cosine-decayed to 0).
    weight_decay: L2 coefficient on the weights (added to the gradient).
    batch_size: examples per step, <= n (incomplete batches are dropped).
    seed: seeds the per-epoch shuffling; the result is a function of it.
    feature_stats: optional (mean, scale) to standardise with, e.g. from a
      larger unlabelled set (few-shot); default: those of `train_x`.

  Returns:
    {"top1", "top5"}: test accuracies as fractions in [0, 1]; "top5" is
    top-min(5, num_classes).
  """
  train_x, train_y, test_x, test_y = accuracy.as_train_test(
      train_x, train_y, test_x, test_y, num_classes)
  if epochs < 1:
    raise ValueError(f"epochs must be >= 1; got {epochs}.")
  if not 1 <= batch_size <= len(train_x):
    raise ValueError(
        f"batch_size={batch_size} must be in [1, {len(train_x)}] (the number "
        "of training examples); lower eval.linear_batch_size.")
  if len(test_x) == 0:
    raise ValueError("test_x is empty: nothing to evaluate.")

  if feature_stats is None:
    feature_stats = standardization_stats(train_x)
  mean, scale = feature_stats
  params = _train_linear(
      jnp.asarray(train_x), jnp.asarray(train_y), mean, scale,
      jax.random.key(seed), jnp.float32(learning_rate),
      jnp.float32(weight_decay), num_classes=num_classes, epochs=epochs,
      batch_size=batch_size)
  top1_hits, top5_hits = _count_hits(
      params, mean, scale, jnp.asarray(test_x), jnp.asarray(test_y),
      top5_k=accuracy.top5_k(num_classes))
  return {"top1": int(top1_hits) / len(test_x),
          "top5": int(top5_hits) / len(test_x)}
