"""Weighted k-nearest-neighbour classification on sharded frozen features.

The monitor of InstDisc (Wu et al. 2018), also used by solo-learn and
lightly: cosine similarity between L2-normalised features, the k most
similar training examples vote for their class with weight exp(sim / T).

At scale neither set is gathered. The queries stay sharded over the
devices; the training features stream past them in blocks of `block_size`
rows: each device L2-normalises block_size / devices of its own training
rows, the block is all-gathered, every local chunk of `chunk_size` queries
scores it, and `lax.top_k` of (running top-k, block scores) keeps the k
best so far. Per device this holds its shards, one block and chunk_size x
(k + block_size) scores, whatever the device count (XLA's memory plan for
ImageNet is in docs/performance.md). The neighbours are those of a dense
top-k over all training rows, except that among exactly equal
similarities the earlier block wins rather than the lower split index.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from mio_jax import errors
from mio_jax import mesh as mesh_lib
from mio_jax.evaluation import accuracy
from mio_jax.evaluation import features as features_lib
from mio_jax.evaluation.features import Features

_ROWS = PartitionSpec(mesh_lib.DATA_AXIS)

# Training rows per block (all devices together), and queries per device
# per chunk: 1,024 x (k + 8,192) float32 scores per device at once (~35 MB).
# Smaller blocks cost time in the merges: on one CPU device, 20k x 2k
# queries at k = 200 took 1.8 s with blocks of 1,024 rows, 0.74 s with
# 8,192, and 0.84 s for the dense form (all similarities at once; load 6).
DEFAULT_BLOCK_SIZE = 8192
DEFAULT_CHUNK_SIZE = 1024


def l2_normalize(features: jax.Array) -> jax.Array:
  """Rows scaled to unit L2 norm (all-zero rows stay zero)."""
  norms = jnp.linalg.norm(features, axis=-1, keepdims=True)
  return features / jnp.maximum(norms, 1e-12)


def _merge(top_sims, top_labels, scores, block_labels, k):
  """The k best of (running top-k, one block's scores), with their labels.

  top_sims, top_labels: (q, k); scores: (q, t); block_labels: (t,).
  Ties keep the running entries first (lax.top_k prefers lower indices).
  """
  sims, picked = jax.lax.top_k(jnp.concatenate([top_sims, scores], axis=1), k)
  from_running = picked < k
  labels = jnp.where(
      from_running,
      jnp.take_along_axis(top_labels, jnp.minimum(picked, k - 1), axis=1),
      block_labels[jnp.maximum(picked - k, 0)])
  return sims, labels


def _local_neighbours(train_x, train_labels, train_valid, queries, *, k,
                      block_size, chunk_size):
  """Per device: the k nearest training (sims, labels) of its local queries.

  Args (local shards): train_x (n, d), train_labels (n,), train_valid (n,),
  queries (q, d); block_size: this device's rows per block. Returns (q, k)
  float32 sims and int32 labels.
  """
  num_local_train, num_queries = train_x.shape[0], queries.shape[0]
  block_size = min(block_size, num_local_train)
  chunk_size = min(chunk_size, num_queries)
  num_chunks = -(-num_queries // chunk_size)
  chunks = jnp.pad(l2_normalize(queries),
                   ((0, num_chunks * chunk_size - num_queries), (0, 0)))
  chunks = chunks.reshape(num_chunks, chunk_size, -1)

  def block_step(carry, block):
    # The last block ends at the last row and overlaps the one before it:
    # rows already seen are masked rather than padded (padding would copy
    # the whole local train shard).
    start = jnp.minimum(block * block_size, num_local_train - block_size)
    fresh = start + jnp.arange(block_size) >= block * block_size
    take = lambda a: jax.lax.dynamic_slice_in_dim(a, start, block_size)
    gather = lambda a: jax.lax.all_gather(a, mesh_lib.DATA_AXIS, tiled=True)
    block_x = gather(l2_normalize(take(train_x)))
    block_labels = gather(take(train_labels))
    block_valid = gather(take(train_valid) & fresh)

    def chunk_step(args):
      chunk, top_sims, top_labels = args
      scores = jnp.where(block_valid, chunk @ block_x.T, -jnp.inf)
      return _merge(top_sims, top_labels, scores, block_labels, k)

    return jax.lax.map(chunk_step, (chunks, *carry)), None

  # Each device's running top-k differs: mark it device-varying for scan.
  start = jax.lax.pcast(
      (jnp.full((num_chunks, chunk_size, k), -jnp.inf, jnp.float32),
       jnp.zeros((num_chunks, chunk_size, k), jnp.int32)),
      mesh_lib.DATA_AXIS, to="varying")
  (top_sims, top_labels), _ = jax.lax.scan(
      block_step, start, jnp.arange(-(-num_local_train // block_size)))
  unchunk = lambda a: a.reshape(num_chunks * chunk_size, k)[:num_queries]
  return unchunk(top_sims), unchunk(top_labels)


def _votes(train: Features, test: Features, temperature, *, k: int,
           num_classes: int, block_size: int, chunk_size: int,
           mesh: Mesh) -> jax.Array:
  top_sims, top_labels = jax.shard_map(
      functools.partial(
          _local_neighbours, k=k, chunk_size=chunk_size,
          block_size=-(-block_size // mesh.shape[mesh_lib.DATA_AXIS])),
      mesh=mesh, in_specs=(_ROWS,) * 4, out_specs=(_ROWS, _ROWS))(
          train.x, train.labels, train.valid, test.x)
  # Each row is divided by exp(max_sim / T) (its nearest neighbour's
  # weight): the class ranking is unchanged and small T cannot overflow.
  weights = jnp.exp((top_sims - jnp.max(top_sims, axis=1, keepdims=True))
                    / temperature)
  rows = jnp.arange(top_sims.shape[0])[:, None]
  votes = jnp.zeros((top_sims.shape[0], num_classes), jnp.float32)
  return votes.at[rows, top_labels].add(weights)


_STATIC = ("k", "num_classes", "block_size", "chunk_size", "mesh")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _class_votes(train, test, temperature, **static):
  return _votes(train, test, temperature, **static)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _hit_counts(train, test, temperature, **static):
  votes = _votes(train, test, temperature, **static)
  return accuracy.hit_counts(votes, test.labels, test.valid,
                             num_classes=static["num_classes"])


def _check_k(k: int, train: Features) -> None:
  if not 1 <= k <= train.num_examples:
    raise errors.InvalidValueError(
        "k", k, f"must be in [1, {train.num_examples}] (the number of "
        "training examples)", "lower knn.k")


def knn_class_votes(train: Features, test: Features, *, num_classes: int,
                    k: int, temperature: float,
                    block_size: int = DEFAULT_BLOCK_SIZE,
                    chunk_size: int = DEFAULT_CHUNK_SIZE) -> jax.Array:
  """Weighted class votes of the k nearest training examples of each test row.

  Returns:
    (test rows, num_classes) float32, sharded like `test` (padding rows
    hold garbage). Row i is proportional to sum over the neighbours of
    class c of exp(cos / T), divided by its nearest neighbour's weight.

  Raises:
    InvalidValueError: if k is not in [1, training examples].
  """
  _check_k(k, train)
  return _class_votes(train, test, jnp.float32(temperature), k=k,
                      num_classes=num_classes, block_size=block_size,
                      chunk_size=chunk_size, mesh=train.mesh)


def knn_classify(train: Features, test: Features, *, num_classes: int, k: int,
                 temperature: float, block_size: int = DEFAULT_BLOCK_SIZE,
                 chunk_size: int = DEFAULT_CHUNK_SIZE) -> dict[str, float]:
  """Temperature-weighted kNN accuracy of the test features against train.

  Args:
    train: the labelled reference set.
    test: the examples to classify (same mesh and feature size).
    num_classes: labels lie in [0, num_classes).
    k: neighbours per test example, 1 <= k <= train.num_examples.
    temperature: T > 0 in the vote weight exp(cosine_similarity / T).
    block_size: training rows scored per step, block_size / devices from
      each device.
    chunk_size: test rows per device scored at once.

  Returns:
    {"top1", "top5"}: fractions in [0, 1]; "top5" is top-min(5, num_classes)
    of the class votes.

  Raises:
    InvalidValueError: bad k or temperature. ValueError: bad features or
    labels (see `features.check_pair`).
  """
  features_lib.check_pair(train, test, num_classes)
  _check_k(k, train)
  if not temperature > 0:
    raise errors.InvalidValueError("temperature", temperature, "must be > 0",
                                   "set knn.temperature > 0")
  counts = _hit_counts(train, test, np.float32(temperature), k=k,
                       num_classes=num_classes, block_size=block_size,
                       chunk_size=chunk_size, mesh=train.mesh)
  return accuracy.fractions(counts, test.num_examples)
