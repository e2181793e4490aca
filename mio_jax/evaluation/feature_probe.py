"""The feature probe: softmax regression on frozen, precomputed features.

The fast form of the paper's linear evaluation (as in SimCLR/BYOL): the
encoder is frozen, its pooled features of the centre crops are computed
once, and a linear classifier is trained on them; we report top-1 and
top-5 on the test split. (The slower protocol trains on augmented crops
through the encoder; this one never runs the encoder again.) Choices here,
and why:
  * Features are standardised per dimension with statistics of the
    *training* features (no test statistics leak). This makes one learning
    rate work across encoders whose feature scales differ by orders of
    magnitude. Dimensions with (near) zero variance keep scale 1, as
    scikit-learn's StandardScaler does, so they cannot blow up test features.
  * SGD with Nesterov momentum 0.9, a cosine learning-rate decay to zero over
    all steps, L2 weight decay on the weights (not the bias), zero init.
  * Data parallel, the features never move: each device shuffles its own
    rows every epoch and contributes ceil(batch_size / devices) of them to
    each step (so the global batch is batch_size rounded up to a multiple
    of the device count); the gradients' sums are all-reduced and divided
    by the step's count of valid rows (padding rows weigh 0). An epoch is
    (rows per device) // (rows per device per step) steps; the rest waits
    for another epoch's permutation. Parameters are replicated. Each epoch
    is one jitted lax.scan over its steps (a preemption signal is seen
    between epochs); the result is a function of `seed` and the device
    count.
"""
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mio_jax import errors
from mio_jax import mesh as mesh_lib
from mio_jax import optim
from mio_jax.evaluation import accuracy
from mio_jax.evaluation import features as features_lib
from mio_jax.evaluation.features import Features

# Below this standard deviation a feature is treated as constant (scale 1).
_MIN_FEATURE_STD = 1e-6
_MOMENTUM = 0.9
_ROWS = PartitionSpec(mesh_lib.DATA_AXIS)


@jax.jit
def _standardization_stats(x: jax.Array, valid: jax.Array
                           ) -> tuple[jax.Array, jax.Array]:
  weight = valid.astype(jnp.float32)[:, None]
  count = jnp.sum(weight)
  mean = jnp.sum(x * weight, axis=0) / count
  std = jnp.sqrt(jnp.sum(jnp.square(x - mean) * weight, axis=0) / count)
  return mean, jnp.where(std < _MIN_FEATURE_STD, 1.0, std)


def standardization_stats(features: Features) -> tuple[jax.Array, jax.Array]:
  """Per-dimension (mean, scale) (D,) of the valid rows; scale 1 if constant."""
  return _standardization_stats(features.x, features.valid)


def _logits(params, x, mean, scale):
  return ((x - mean) / scale) @ params["kernel"] + params["bias"]


def _optimizer(learning_rate, weight_decay, total_steps: int):
  return optim.classifier_optimizer(
      optax.cosine_decay_schedule(learning_rate, total_steps),
      momentum=_MOMENTUM, weight_decay=weight_decay)


@functools.partial(jax.jit, static_argnames=("feature_dim", "num_classes",
                                             "mesh"))
def _initial_carry(*, feature_dim: int, num_classes: int, mesh: Mesh):
  """(params, optimizer state) at step 0, zeros, replicated."""
  params = {"kernel": jnp.zeros((feature_dim, num_classes), jnp.float32),
            "bias": jnp.zeros((num_classes,), jnp.float32)}
  # The state's structure and zeros do not depend on the hyperparameters.
  carry = (params, _optimizer(0.0, 0.0, 1).init(params))
  return jax.lax.with_sharding_constraint(
      carry, NamedSharding(mesh, PartitionSpec()))


def _local_epoch(carry, x, labels, valid, mean, scale, epoch_key,
                 learning_rate, weight_decay, *, total_steps, rows_per_step):
  """One epoch on this device's rows (x, labels, valid: its shards).

  carry = (params, optimizer state), the same on every device.
  """
  num_rows = x.shape[0]
  steps_per_epoch = num_rows // rows_per_step
  optimizer = _optimizer(learning_rate, weight_decay, total_steps)

  def loss_sum(params, rows):
    losses = optax.softmax_cross_entropy_with_integer_labels(
        _logits(params, x[rows], mean, scale), jnp.maximum(labels[rows], 0))
    return jnp.sum(jnp.where(valid[rows], losses, 0.0))

  def train_step(carry, rows):
    params, opt_state = carry
    count = jax.lax.psum(jnp.sum(valid[rows]), mesh_lib.DATA_AXIS)
    grads = jax.tree.map(
        lambda g: jax.lax.psum(g, mesh_lib.DATA_AXIS) / jnp.maximum(count, 1),
        jax.grad(loss_sum)(params, rows))
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None

  device_key = jax.random.fold_in(epoch_key,
                                  jax.lax.axis_index(mesh_lib.DATA_AXIS))
  order = jax.random.permutation(device_key, num_rows)
  steps = order[:steps_per_epoch * rows_per_step].reshape(
      steps_per_epoch, rows_per_step)
  carry, _ = jax.lax.scan(train_step, carry, steps)
  return carry


@functools.partial(jax.jit, donate_argnums=(0,),
                   static_argnames=("total_steps", "rows_per_step", "mesh"))
def _train_epoch(carry, train: Features, mean, scale, epoch_key,
                 learning_rate, weight_decay, *, total_steps: int,
                 rows_per_step: int, mesh: Mesh):
  replicated = PartitionSpec()
  # check_vma=False: the gradients are all-reduced explicitly above (with
  # it, differentiating w.r.t. replicated params would insert a second psum).
  return jax.shard_map(
      functools.partial(_local_epoch, total_steps=total_steps,
                        rows_per_step=rows_per_step),
      mesh=mesh, in_specs=(replicated,) + (_ROWS,) * 3 + (replicated,) * 5,
      out_specs=replicated, check_vma=False)(
          carry, train.x, train.labels, train.valid, mean, scale, epoch_key,
          learning_rate, weight_decay)


def train_classifier(train: Features, *, num_classes: int, epochs: int,
                     learning_rate: float, weight_decay: float,
                     batch_size: int, seed: int,
                     feature_stats: tuple[jax.Array, jax.Array]) -> dict:
  """The trained classifier {"kernel": (D, C), "bias": (C,)}, replicated.

  One jitted call per epoch (a scan over its steps), so a preemption
  signal is seen between epochs.

  Raises:
    InvalidValueError: epochs < 1 or batch_size not in [1, train examples].
  """
  if epochs < 1:
    raise errors.InvalidValueError("epochs", epochs, "must be >= 1",
                                   "raise feature_probe.epochs")
  if not 1 <= batch_size <= train.num_examples:
    raise errors.InvalidValueError(
        "batch_size", batch_size, f"must be in [1, {train.num_examples}] (the "
        "number of training examples)", "lower feature_probe.batch_size")
  mean, scale = feature_stats
  mesh = train.mesh
  devices = mesh.shape[mesh_lib.DATA_AXIS]
  rows_per_step = -(-batch_size // devices)
  steps_per_epoch = (train.x.shape[0] // devices) // rows_per_step
  carry = _initial_carry(feature_dim=train.dim, num_classes=num_classes,
                         mesh=mesh)
  for epoch_key in jax.random.split(jax.random.key(seed), epochs):
    carry = _train_epoch(carry, train, mean, scale, epoch_key,
                         jnp.float32(learning_rate), jnp.float32(weight_decay),
                         total_steps=epochs * steps_per_epoch,
                         rows_per_step=rows_per_step, mesh=mesh)
  return carry[0]


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _hit_counts(params, mean, scale, test: Features, *, num_classes: int):
  return accuracy.hit_counts(_logits(params, test.x, mean, scale), test.labels,
                             test.valid, num_classes=num_classes)


def feature_probe_classify(
    train: Features, test: Features, *, num_classes: int, epochs: int,
    learning_rate: float, weight_decay: float, batch_size: int, seed: int,
    feature_stats: Optional[tuple[jax.Array, jax.Array]] = None,
) -> dict[str, float]:
  """Trains a linear classifier on train features, scores it on test features.

  Args:
    train: the labelled training examples' features.
    test: the test examples' features (same mesh and feature size).
    num_classes: labels lie in [0, num_classes).
    epochs: passes over the training set (>= 1).
    learning_rate: peak SGD learning rate (cosine-decayed to 0).
    weight_decay: L2 coefficient on the weights (added to the gradient).
    batch_size: examples per step, <= train.num_examples (rounded up to a
      multiple of the device count).
    seed: seeds the per-epoch shuffling; the result is a function of it and
      of the device count.
    feature_stats: optional (mean, scale) to standardise with, e.g. from a
      larger unlabelled set (few-shot); default: those of `train`.

  Returns:
    {"top1", "top5"}: test accuracies as fractions in [0, 1]; "top5" is
    top-min(5, num_classes).

  Raises:
    InvalidValueError: bad epochs or batch_size. ValueError: bad features
    or labels (see `features.check_pair`).
  """
  features_lib.check_pair(train, test, num_classes)
  if feature_stats is None:
    feature_stats = standardization_stats(train)
  params = train_classifier(
      train, num_classes=num_classes, epochs=epochs,
      learning_rate=learning_rate, weight_decay=weight_decay,
      batch_size=batch_size, seed=seed, feature_stats=feature_stats)
  counts = _hit_counts(params, *feature_stats, test, num_classes=num_classes)
  return accuracy.fractions(counts, test.num_examples)
