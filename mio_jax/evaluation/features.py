"""Frozen-encoder features of a split, kept sharded over the mesh's devices.

At ImageNet scale the train split's features (1.28M x 2048 float32, 10.5
GB) fit no single device and need not visit any host: `extract_features`
writes every encoded batch straight into a global array sharded over the
`data` axis, and the protocols work on those shards. Only small things
reach the host: labels and positions (a few MB), few-shot subsets and the
t-SNE sample.

Layout. The rows of a `Features` are split into equal contiguous blocks,
one per device in mesh order (`PartitionSpec("data")`). Each device's block
holds, batch after batch, the rows of the eval batches that it encoded, so
no row ever moves between devices. The global row order is therefore not
the split's order; `position` records each row's index in the split and
`dataset_order` recovers it.
"""
import functools
from typing import Any, Callable, Iterable, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mio_jax import mesh as mesh_lib

_ROWS = PartitionSpec(mesh_lib.DATA_AXIS)


@flax.struct.dataclass
class Features:
  """Features and labels of one split, sharded over the mesh's `data` axis.

  Attributes:
    x: float32 (rows, D), the encoder's features.
    labels: int32 (rows,), -1 on padding rows.
    valid: bool (rows,), False on padding rows (the padded last eval batch,
      or rounding up to a multiple of the device count).
    position: int32 (rows,), each valid row's index in its split.
    num_examples: the number of valid rows (static).
  `rows` is a multiple of the number of devices; all four arrays are
  sharded with `PartitionSpec("data")`.
  """
  x: jax.Array
  labels: jax.Array
  valid: jax.Array
  position: jax.Array
  num_examples: int = flax.struct.field(pytree_node=False)

  @property
  def mesh(self) -> Mesh:
    return self.x.sharding.mesh

  @property
  def dim(self) -> int:
    return self.x.shape[1]


def from_arrays(x: np.ndarray, labels: np.ndarray, mesh: Mesh) -> Features:
  """Features from host arrays (every process passes the same ones).

  Args:
    x: (n, D) features, n >= 1.
    labels: (n,) int labels.
    mesh: a mesh with a `data` axis; rows are padded to a multiple of its size.

  Raises:
    ValueError: if the shapes do not match.
  """
  x = np.asarray(x, np.float32)
  labels = np.asarray(labels).astype(np.int32)
  if x.ndim != 2:
    raise ValueError(f"features must be 2-D (examples, feature_dim); got "
                     f"shape {x.shape}.")
  if labels.shape != (x.shape[0],):
    raise ValueError(f"labels must have shape ({x.shape[0]},) to match the "
                     f"features; got {labels.shape}.")
  num_examples = len(x)
  padding = -num_examples % mesh.size
  sharding = NamedSharding(mesh, _ROWS)
  put = lambda a, fill: jax.device_put(
      np.pad(a, [(0, padding)] + [(0, 0)] * (a.ndim - 1),
             constant_values=fill), sharding)
  return Features(x=put(x, 0), labels=put(labels, -1),
                  valid=put(np.ones(num_examples, bool), False),
                  position=put(np.arange(num_examples, dtype=np.int32), -1),
                  num_examples=num_examples)


# ---- extraction --------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("rows", "dim", "mesh"))
def _empty(*, rows: int, dim: int, mesh: Mesh) -> Features:
  sharding = NamedSharding(mesh, _ROWS)
  fill = lambda shape, value, dtype: jax.lax.with_sharding_constraint(
      jnp.full(shape, value, dtype), sharding)
  return Features(x=fill((rows, dim), 0, jnp.float32),
                  labels=fill((rows,), -1, jnp.int32),
                  valid=fill((rows,), False, jnp.bool_),
                  position=fill((rows,), -1, jnp.int32), num_examples=0)


@functools.partial(jax.jit, static_argnames=("mesh",), donate_argnums=(0,))
def _write_batch(buffer: Features, encoded, labels, mask, batch_index, *,
                 mesh: Mesh) -> Features:
  """Copies batch `batch_index` into each device's block, in place."""

  def write(x, buffer_labels, valid, position, encoded, labels, mask,
            batch_index):
    local_batch = encoded.shape[0]
    start = batch_index * local_batch
    # Row r of device d in global batch b is the split's example
    # b * B + d * (B / devices) + r: eval batches list the split in order.
    global_batch = local_batch * mesh.shape[mesh_lib.DATA_AXIS]
    first = (batch_index * global_batch
             + jax.lax.axis_index(mesh_lib.DATA_AXIS) * local_batch)
    update = lambda a, u: jax.lax.dynamic_update_slice_in_dim(a, u, start, 0)
    return (update(x, encoded.astype(jnp.float32)),
            update(buffer_labels, jnp.where(mask, labels, -1)),
            update(valid, mask),
            update(position, first + jnp.arange(local_batch, dtype=jnp.int32)))

  x, labels, valid, position = jax.shard_map(
      write, mesh=mesh, in_specs=(_ROWS,) * 7 + (PartitionSpec(),),
      out_specs=(_ROWS,) * 4)(buffer.x, buffer.labels, buffer.valid,
                              buffer.position, encoded,
                              labels.astype(jnp.int32), mask, batch_index)
  return Features(x=x, labels=labels, valid=valid, position=position,
                  num_examples=0)


def extract_features(encode_fn: Callable[[Any, jax.Array], jax.Array],
                     variables: Any,
                     batches: Iterable[Mapping[str, jax.Array]], *,
                     num_batches: int) -> Features:
  """Encodes every batch into sharded `Features`; nothing leaves the devices.

  Args:
    encode_fn: (variables, images) -> (B, D) features sharded over `data`,
      e.g. `encoder.make_encode_fn`.
    variables: passed through to `encode_fn`.
    batches: {"image", "label", "mask"} dicts of global arrays of the same
      batch size B, sharded over `data` (possibly across processes), as
      `data.eval_batches` yields them: batch b holds the split's examples
      [b * B, (b + 1) * B); rows with mask False are padding.
    num_batches: how many batches `batches` yields (sizes the buffer).

  Returns:
    Features of num_batches * B rows.

  Raises:
    ValueError: if `batches` does not yield exactly `num_batches` batches.
  """
  buffer = None
  count = 0
  for batch in batches:
    if count == num_batches:
      raise ValueError(f"extract_features expected {num_batches} batches "
                       "and got more.")
    encoded = encode_fn(variables, batch["image"])
    mesh = encoded.sharding.mesh
    if buffer is None:
      buffer = _empty(rows=num_batches * encoded.shape[0],
                      dim=encoded.shape[1], mesh=mesh)
    buffer = _write_batch(buffer, encoded, batch["label"], batch["mask"],
                          np.int32(count), mesh=mesh)
    count += 1
  if count != num_batches or buffer is None:
    raise ValueError(f"extract_features expected {num_batches} batches and "
                     f"got {count}: the split is empty or its size changed.")
  return buffer.replace(num_examples=int(jnp.sum(buffer.valid)))


# ---- small things for the host -----------------------------------------------


def _to_host(value: jax.Array) -> np.ndarray:
  """A small global array as numpy, the same on every process."""
  if not value.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(value, tiled=True))
  return np.asarray(value)


def dataset_order(features: Features) -> tuple[np.ndarray, np.ndarray]:
  """(labels, rows): each valid example's label and row, in the split's order.

  Only labels and positions (int32, a few MB at ImageNet size) come to the
  host, on every process.
  """
  valid = _to_host(features.valid)
  rows = np.flatnonzero(valid)
  rows = rows[np.argsort(_to_host(features.position)[rows], kind="stable")]
  return _to_host(features.labels)[rows], rows


def _replicated_rows(x, labels, position, rows, *, mesh: Mesh):
  """Rows `rows` of the sharded arrays, replicated on every device."""

  def select(x, labels, position, rows):
    owner, local = jnp.divmod(rows, x.shape[0])
    mine = owner == jax.lax.axis_index(mesh_lib.DATA_AXIS)
    # Each row has one owner; the others add zeros, so the sum is exact.
    pick = lambda a: jax.lax.psum(
        jnp.where(mine.reshape((-1,) + (1,) * (a.ndim - 1)), a[local], 0),
        mesh_lib.DATA_AXIS)
    return pick(x), pick(labels), pick(position)

  return jax.shard_map(select, mesh=mesh, in_specs=(_ROWS,) * 3 +
                       (PartitionSpec(),),
                       out_specs=PartitionSpec())(x, labels, position, rows)


_select = jax.jit(_replicated_rows, static_argnames=("mesh",))


@functools.partial(jax.jit, static_argnames=("num_examples", "mesh"))
def _take(features: Features, rows, *, num_examples: int,
          mesh: Mesh) -> Features:
  x, labels, position = _replicated_rows(
      features.x, features.labels, features.position, rows, mesh=mesh)
  valid = jnp.arange(rows.shape[0]) < num_examples
  shard = lambda a: jax.lax.with_sharding_constraint(
      a, NamedSharding(mesh, _ROWS))
  return Features(x=shard(x), labels=shard(jnp.where(valid, labels, -1)),
                  valid=shard(valid), position=shard(position),
                  num_examples=num_examples)


def take(features: Features, rows: np.ndarray) -> Features:
  """The valid rows `rows` (row indices, e.g. from `dataset_order`) as Features.

  Meant for small selections (few-shot subsets): every device briefly holds
  all of them. Every process must call it (it runs a collective).
  """
  rows = np.asarray(rows, np.int32)
  padding = -len(rows) % features.mesh.size
  return _take(features, np.pad(rows, (0, padding)), num_examples=len(rows),
               mesh=features.mesh)


def take_to_host(features: Features, rows: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
  """(x (s, D) float32, labels (s,)) of rows `rows` as numpy, on every process.

  Every process must call it (it runs a collective).
  """
  x, labels, _ = _select(features.x, features.labels, features.position,
                         np.asarray(rows, np.int32), mesh=features.mesh)
  # Replicated: any one local copy is the whole value, also across processes.
  return np.asarray(x.addressable_data(0)), np.asarray(labels.addressable_data(0))


@jax.jit
def _label_range(labels, valid):
  return (jnp.min(jnp.where(valid, labels, jnp.iinfo(jnp.int32).max)),
          jnp.max(jnp.where(valid, labels, -1)))


def check_pair(train: Features, test: Features, num_classes: int) -> None:
  """Raises ValueError unless both sets have examples, one feature size and labels in range."""
  for name, features in (("train", train), ("test", test)):
    if features.num_examples == 0:
      raise ValueError(f"the {name} features are empty: nothing to evaluate.")
    low, high = (int(v) for v in _label_range(features.labels, features.valid))
    if low < 0 or high >= num_classes:
      raise ValueError(
          f"{name} labels lie in [{low}, {high}] but num_classes="
          f"{num_classes}; labels must lie in [0, num_classes).")
  if test.dim != train.dim:
    raise ValueError(f"test features have {test.dim} dimensions but train "
                     f"features have {train.dim}.")
