"""Today's dense evaluation (before sharding), frozen as a test reference.

The whole training set on one device: kNN scores every query against every
training row, the linear probe gathers its batches from a global
permutation. Kept only so the sharded, streamed versions can be checked
against it; taken from mio_jax/evaluation at commit dc32ccc.
"""
import functools

import jax
import jax.numpy as jnp
import optax


def _unit(x):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _topk_hits(scores, labels, k):
  _, top = jax.lax.top_k(scores, k)
  return jnp.any(top == labels[:, None], axis=1)


@functools.partial(jax.jit, static_argnames=("k", "num_classes"))
def _knn_hits(train_x, train_y, test_x, test_y, temperature, *, k,
              num_classes):
  similarities = _unit(test_x) @ _unit(train_x).T
  top_sims, top_indices = jax.lax.top_k(similarities, k)
  weights = jnp.exp((top_sims - jnp.max(top_sims, axis=1, keepdims=True))
                    / temperature)
  rows = jnp.arange(test_x.shape[0])[:, None]
  votes = jnp.zeros((test_x.shape[0], num_classes)).at[
      rows, train_y[top_indices]].add(weights)
  return (jnp.sum(_topk_hits(votes, test_y, 1)),
          jnp.sum(_topk_hits(votes, test_y, min(5, num_classes))))


def knn_classify(train_x, train_y, test_x, test_y, *, num_classes, k,
                 temperature):
  hits = _knn_hits(jnp.asarray(train_x, jnp.float32), jnp.asarray(train_y),
                   jnp.asarray(test_x, jnp.float32), jnp.asarray(test_y),
                   jnp.float32(temperature), k=k, num_classes=num_classes)
  return {"top1": int(hits[0]) / len(test_x), "top5": int(hits[1]) / len(test_x)}


def _logits(params, x, mean, scale):
  return ((x - mean) / scale) @ params["kernel"] + params["bias"]


@functools.partial(jax.jit,
                   static_argnames=("num_classes", "epochs", "batch_size"))
def train_linear(train_x, train_y, key, learning_rate, weight_decay, *,
                 num_classes, epochs, batch_size):
  """(params, mean, scale) of today's linear probe."""
  mean = jnp.mean(train_x, axis=0)
  std = jnp.std(train_x, axis=0)
  scale = jnp.where(std < 1e-6, 1.0, std)
  num_examples, feature_dim = train_x.shape
  steps_per_epoch = num_examples // batch_size
  optimizer = optax.chain(
      optax.add_decayed_weights(weight_decay,
                                mask={"kernel": True, "bias": False}),
      optax.sgd(optax.cosine_decay_schedule(learning_rate,
                                            epochs * steps_per_epoch),
                momentum=0.9, nesterov=True))
  params = {"kernel": jnp.zeros((feature_dim, num_classes)),
            "bias": jnp.zeros((num_classes,))}

  def loss_fn(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(
        _logits(params, x, mean, scale), y).mean()

  def train_step(carry, batch):
    params, opt_state = carry
    grads = jax.grad(loss_fn)(params, train_x[batch], train_y[batch])
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None

  def train_epoch(carry, epoch_key):
    order = jax.random.permutation(epoch_key, num_examples)
    batches = order[:steps_per_epoch * batch_size].reshape(
        steps_per_epoch, batch_size)
    return jax.lax.scan(train_step, carry, batches)[0], None

  (params, _), _ = jax.lax.scan(train_epoch, (params, optimizer.init(params)),
                                jax.random.split(key, epochs))
  return params, mean, scale


def feature_probe_classify(train_x, train_y, test_x, test_y, *, num_classes, epochs,
                 learning_rate, weight_decay, batch_size, seed):
  params, mean, scale = train_linear(
      jnp.asarray(train_x, jnp.float32), jnp.asarray(train_y),
      jax.random.key(seed), jnp.float32(learning_rate),
      jnp.float32(weight_decay), num_classes=num_classes, epochs=epochs,
      batch_size=batch_size)
  logits = _logits(params, jnp.asarray(test_x), mean, scale)
  test_y = jnp.asarray(test_y)
  hits = lambda k: int(jnp.sum(_topk_hits(logits, test_y, k))) / len(test_y)
  return {"top1": hits(1), "top5": hits(min(5, num_classes))}
