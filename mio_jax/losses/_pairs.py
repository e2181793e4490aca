"""The pair engine under every loss and the pair metrics.

Notation (docs/loss.md): a batch of N images, two views each; `u1`, `u2`
are the (N, d) projector outputs. Stacked, the 2N rows are numbered 0..N-1
(view 1) and N..2N-1 (view 2); row i's positive partner is
p(i) = (i + N) mod 2N. Every row is an *anchor* and also a *key*.

A loss hands the engine a `PairFormula`: which keys an anchor sees, how
the logits s_ij / tau over those keys reduce to one statistic per anchor,
and the per-anchor loss built from that statistic and the anchor's
positive similarity. The engine knows no loss by name.

Rows carry their global ids, so one computation serves the whole batch on
one device, each device's anchors against all-gathered keys
(`jax.shard_map` over the mesh's data axis), and blocks of anchors against
blocks of keys streamed one pair of blocks at a time (`block_size`,
merging the per-block statistics).

Similarities are computed in float32 (float64 when given float64) whatever
the input dtype, so bfloat16 models get float32 losses.
"""
import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from mio_jax import errors
from mio_jax import mesh as mesh_lib

Array = jax.Array

# Rows with a norm below this are divided by it instead of their norm, so an
# all-zero projection gives a zero unit vector instead of a NaN.
NORM_EPS = 1e-12

# Full float32 matmuls for the similarities: at default precision TPUs (one
# bfloat16 pass) and GPUs that allow TF32 round float32 matmul inputs to 8-10
# mantissa bits, and a 1e-3 similarity error is a 1e-2 logit error at
# tau = 0.1. The (2N x 2N x d) similarity matmul is tiny next to the encoder,
# so exactness is cheap.
SIMILARITY_PRECISION = jax.lax.Precision.HIGHEST


# ---- how a loss describes itself --------------------------------------------


class KeyReduction(NamedTuple):
  """How an anchor's logits over its keys become one statistic.

  reduce: (logits (n, m), keep (n, m) bool) -> (n,), over the kept keys.
    A row with no kept key must give the merge's identity, with zero
    derivatives of every order.
  merge: (num_key_blocks, n) statistics of disjoint key blocks -> (n,).
  """
  reduce: Callable[[Array, Array], Array]
  merge: Callable[[Array], Array]


def _logsumexp_over_kept(logits: Array, keep: Array) -> Array:
  # Dropped keys become -inf before the max-shifted exponentials, so no
  # exp(logit) is ever formed unshifted.
  logits = jnp.where(keep, logits, -jnp.inf)
  # A row drops at most two keys (itself, its partner), so only a block of
  # two keys (streamed blocks of one image) can leave a row none. That row
  # must give -inf, the merge's identity, but not as a logsumexp over -inf
  # alone, whose second derivatives are NaN (inf - inf): it reduces zeros,
  # and -inf is put in after. Wider blocks keep the plain program (the
  # guard moved the dense float32 loss by an ulp).
  if logits.shape[1] > 2:
    return jax.nn.logsumexp(logits, axis=1)
  any_kept = jnp.any(keep, axis=1)
  logits = jnp.where(any_kept[:, None], logits, 0.0)
  return jnp.where(any_kept, jax.nn.logsumexp(logits, axis=1), -jnp.inf)


def _softplus_sum_over_kept(logits: Array, keep: Array) -> Array:
  return jnp.sum(jnp.where(keep, jax.nn.softplus(logits), 0.0), axis=1)


LOGSUMEXP = KeyReduction(reduce=_logsumexp_over_kept,
                         merge=functools.partial(jax.nn.logsumexp, axis=0))
SOFTPLUS_SUM = KeyReduction(reduce=_softplus_sum_over_kept,
                            merge=functools.partial(jnp.sum, axis=0))


@dataclasses.dataclass(frozen=True)
class PairFormula:
  """One loss as the engine computes it; the batch loss is the mean of l_i.

  l_i = anchor_loss(key_stat_i, s_{i,p(i)}, num_images=N, dim=d), where
  key_stat_i = key_reduction over the keys j != i (and j != p(i) when
  exclude_partner) of s_ij / key_temperature.

  anchor_loss: ((n,) key statistics, (n,) positive cosine similarities,
    *, num_images, dim) -> (n,) per-anchor losses.
  """
  exclude_partner: bool
  key_reduction: KeyReduction
  key_temperature: Any  # a float, or a traced scalar inside jit
  anchor_loss: Callable[..., Array]


# ---- checks -----------------------------------------------------------------


def check_hyperparameter(key: str, value, *, allow_zero: bool = False) -> None:
  """`errors.check_positive` for a value known at trace time; traced
  values (a temperature passed through jit) are not checked."""
  if not isinstance(value, jax.core.Tracer):
    errors.check_positive(key, value, allow_zero=allow_zero)


def check_block_size_option(block_size: Optional[int]) -> None:
  """Raises InvalidValueError unless block_size is None or an integer > 0."""
  if block_size is not None and not (isinstance(block_size, int)
                                     and block_size > 0):
    raise errors.InvalidValueError(
        "block_size", block_size, "must be None or a positive integer",
        "set {key} to a divisor of the images per device, or leave it None "
        "for the dense loss")


def check_block_size(block_size: Optional[int], *, num_images: int,
                     num_devices: int = 1) -> None:
  """Raises InvalidValueError unless blocks tile each device's images.

  Each device streams its own n = num_images / num_devices anchor images
  against all num_images keys in blocks of block_size images, so
  block_size must divide n (then it divides num_images too).
  """
  check_block_size_option(block_size)
  images_per_device = num_images // num_devices
  if block_size is None or images_per_device % block_size == 0:
    return
  divisor = max(b for b in range(1, min(block_size, images_per_device) + 1)
                if images_per_device % b == 0)
  where = (f"the batch of {num_images} images" if num_devices == 1 else
           f"the {images_per_device} images per device (batch {num_images} "
           f"over {num_devices} devices)")
  raise errors.InvalidValueError(
      "block_size", block_size, f"does not divide {where}",
      f"use a divisor of {images_per_device}, e.g. {{key}}={divisor}, or "
      "None for the dense loss")


def _check_shapes(u1: Array, u2: Array) -> None:
  if u1.ndim != 2 or u1.shape != u2.shape:
    raise ValueError(
        "u1 and u2 must both have shape (N, d) (per device: (n, d)); got "
        f"{u1.shape} and {u2.shape}.")


def _check_enough_images(num_images: int) -> None:
  if num_images < 2:
    raise ValueError(
        f"a pair loss needs at least 2 images per batch (got N={num_images}): "
        "with one image there are no negative pairs.")


def check_views(u1: Array, u2: Array) -> int:
  """Validates the view shapes (static) and returns N, the images per view."""
  _check_shapes(u1, u2)
  _check_enough_images(u1.shape[0])
  return u1.shape[0]


# ---- rows, similarities, masks ----------------------------------------------


def compute_dtype(x: Array) -> jnp.dtype:
  """float32 for bfloat16/float16/float32 inputs, float64 for float64."""
  return jnp.promote_types(x.dtype, jnp.float32)


def normalize_rows(u: Array) -> Array:
  """u / max(||u||, eps) row-wise, in float32 (or float64) precision."""
  u = u.astype(compute_dtype(u))
  # sqrt(max(|u|^2, eps^2)) = max(|u|, eps), but with a finite gradient at 0.
  squared_norm = jnp.sum(u * u, axis=-1, keepdims=True)
  return u * jax.lax.rsqrt(jnp.maximum(squared_norm, NORM_EPS**2))


def similarities(a: Array, b: Array) -> Array:
  """(n, m) dot products of the rows of a and b at full precision."""
  return jnp.matmul(a, b.T, precision=SIMILARITY_PRECISION)


def key_mask(anchor_ids: Array, key_ids: Array, *, num_images: int,
             exclude_partner: bool) -> Array:
  """(n, m) bool: True where key j counts for anchor i (never j = i)."""
  anchor_ids = anchor_ids[:, None]
  key_ids = key_ids[None, :]
  keep = key_ids != anchor_ids
  if exclude_partner:
    keep &= key_ids != (anchor_ids + num_images) % (2 * num_images)
  return keep


class Views(NamedTuple):
  """Unit vectors one device works on: its anchor images and every key.

  On one device the anchors are the whole batch; inside shard_map they are
  the device's n images and the keys are all-gathered from every device.
  """
  anchors1: Array  # (n, d) view 1 of the anchor images
  anchors2: Array  # (n, d) view 2
  keys1: Array  # (N, d) view 1 of every image
  keys2: Array  # (N, d) view 2
  first_image: Any  # global index of the anchors' image 0 (traced per device)

  @property
  def num_images(self) -> int:
    return self.keys1.shape[0]

  @property
  def num_anchor_images(self) -> int:
    return self.anchors1.shape[0]


def device_views(u1_local: Array, u2_local: Array,
                 axis_name: Optional[str]) -> Views:
  """Normalised views of this device's rows against all rows as keys.

  axis_name None: no mesh axis, the rows are the whole batch. Otherwise
  (inside shard_map) each device holds the same number n of images, rows
  [axis_index * n, (axis_index + 1) * n) of the global batch; the keys are
  all-gathered, and gradients flow back through the all-gather (its
  transpose is a reduce-scatter).
  """
  _check_shapes(u1_local, u2_local)
  z1, z2 = normalize_rows(u1_local), normalize_rows(u2_local)
  if axis_name is None:
    views = Views(z1, z2, z1, z2, 0)
  else:
    gather = functools.partial(jax.lax.all_gather, axis_name=axis_name,
                               tiled=True)
    views = Views(z1, z2, gather(z1), gather(z2),
                  jax.lax.axis_index(axis_name) * z1.shape[0])
  _check_enough_images(views.num_images)
  return views


def psum(x: Any, axis_name: Optional[str]) -> Any:
  """lax.psum over the mesh axis; the identity without one."""
  return x if axis_name is None else jax.lax.psum(x, axis_name)


# ---- streaming over blocks --------------------------------------------------


# Loop bodies of two blocks: at N = 512 with blocks of 256 (two blocks) the
# streamed loss then has no loop left, and took 9.2-9.7 ms against 12-15 ms
# with one block per iteration (the dense loss: 9.6-10.3 ms; docs/
# performance.md, "The streamed loss").
_BLOCKS_PER_ITERATION = 2


def _map_blocks(fn: Callable[[Array], Any], num_blocks: int) -> Any:
  """fn(index) for index in range(num_blocks), outputs stacked."""
  return jax.lax.scan(lambda carry, index: (carry, fn(index)), None,
                      jnp.arange(num_blocks),
                      unroll=_BLOCKS_PER_ITERATION)[1]


def _map_image_blocks(block_fn: Callable[[Any, int], Any], num_images: int,
                      block_size: Optional[int]) -> Any:
  """block_fn(start, size) over consecutive image blocks, outputs stacked.

  block_size None is one block of all images (the dense computation). With
  an integer, blocks run one after the other (`_map_blocks`). What a gradient
  keeps is bounded by the loss itself (`_streamed_key_statistic`), not here.
  """
  if block_size is None:
    return jax.tree.map(lambda x: x[None], block_fn(0, num_images))
  return _map_blocks(lambda index: block_fn(index * block_size, block_size),
                     num_images // block_size)


def _view_rows(view1: Array, view2: Array, start, size: int, *, first_image,
               num_images: int) -> Tuple[Array, Array]:
  """Images [start, start + size) of two (n, d) view arrays as 2 * size rows.

  Returns the rows (view 1 then view 2) and their global row ids;
  `first_image` is the global batch index of the arrays' row 0.
  """
  images = first_image + start + jnp.arange(size)
  rows = [jax.lax.dynamic_slice_in_dim(z, start, size) for z in (view1, view2)]
  return jnp.concatenate(rows), jnp.concatenate([images, images + num_images])


class AnchorBlock(NamedTuple):
  """2b anchor rows (b images, view 1 then view 2) and their partners."""
  anchors: Array  # (2b, d) unit vectors z_i
  ids: Array  # (2b,) global row ids i
  partners: Array  # (2b, d) unit vectors z_p(i), row by row

  def positive_similarities(self) -> Array:
    """(2b,) s_{i,p(i)}."""
    return jnp.sum(self.anchors * self.partners, axis=1)


def map_anchor_blocks(block_fn: Callable[[AnchorBlock], Any], views: Views,
                      block_size: Optional[int]) -> Any:
  """block_fn over blocks of block_size anchor images, outputs stacked.

  Raises InvalidValueError unless block_size (None or an integer) divides
  the anchor images (the images per device).
  """
  check_block_size(block_size, num_images=views.num_images,
                   num_devices=views.num_images // views.num_anchor_images)
  rows = functools.partial(_view_rows, first_image=views.first_image,
                           num_images=views.num_images)

  def one_block(start, size):
    anchors, ids = rows(views.anchors1, views.anchors2, start, size)
    partners, _ = rows(views.anchors2, views.anchors1, start, size)
    return block_fn(AnchorBlock(anchors, ids, partners))

  return _map_image_blocks(one_block, views.num_anchor_images, block_size)


def map_key_blocks(block_fn: Callable[[Array, Array], Any], views: Views,
                   block_size: Optional[int]) -> Any:
  """block_fn(keys (2b, d), key_ids (2b,)) over blocks of block_size key
  images of the whole batch, outputs stacked."""
  rows = functools.partial(_view_rows, first_image=0,
                           num_images=views.num_images)
  return _map_image_blocks(
      lambda start, size: block_fn(*rows(views.keys1, views.keys2, start,
                                         size)),
      views.num_images, block_size)


# ---- the loss -----------------------------------------------------------------


def _key_block_statistic(anchors: Array, anchor_ids: Array, keys: Array,
                         key_ids: Array, temperature, formula: PairFormula, *,
                         num_images: int) -> Array:
  """(n,) reduction of the anchors' logits over one block of keys."""
  logits = similarities(anchors, keys) / temperature
  keep = key_mask(anchor_ids, key_ids, num_images=num_images,
                  exclude_partner=formula.exclude_partner)
  return formula.key_reduction.reduce(logits, keep)


def _streamed_key_statistic(block: AnchorBlock, views: Views,
                            formula: PairFormula, block_size: int) -> Array:
  """The (2b,) key statistics of an anchor block, streamed over key blocks.

  The gradient is written out (`jax.custom_vjp`) the way flash attention
  does it: the forward pass keeps only the per-key-block statistics (O(N)
  values), and the backward pass recomputes each key block's logits once and
  takes that block's gradient. Differentiating the streamed forward pass
  directly needs `jax.checkpoint` to bound memory, which recomputed every
  logit twice (the anchor level and the key level): the streamed loss took
  1.4-1.6x the dense time, against 0.90-1.00x in CPU time here
  (docs/performance.md, "The streamed loss").
  """
  num_images = views.num_images
  merge = formula.key_reduction.merge
  key_rows = functools.partial(_view_rows, first_image=0,
                               num_images=num_images)
  num_blocks = num_images // block_size
  statistic = functools.partial(_key_block_statistic, formula=formula,
                                num_images=num_images)

  def block_statistics(anchors, anchor_ids, keys1, keys2, temperature):
    def one_block(index):
      keys, key_ids = key_rows(keys1, keys2, index * block_size, block_size)
      return statistic(anchors, anchor_ids, keys, key_ids, temperature)
    return _map_blocks(one_block, num_blocks)

  @jax.custom_vjp
  def streamed(anchors, anchor_ids, keys1, keys2, temperature):
    return merge(block_statistics(anchors, anchor_ids, keys1, keys2,
                                  temperature))

  def forward(anchors, anchor_ids, keys1, keys2, temperature):
    stats = block_statistics(anchors, anchor_ids, keys1, keys2, temperature)
    return merge(stats), (anchors, anchor_ids, keys1, keys2, temperature,
                          stats)

  def backward(residuals, cotangent):
    anchors, anchor_ids, keys1, keys2, temperature, stats = residuals
    block_cotangents = jax.vjp(merge, stats)[1](cotangent)[0]

    def one_block(totals, inputs):
      index, block_cotangent = inputs
      keys, key_ids = key_rows(keys1, keys2, index * block_size, block_size)
      _, pullback = jax.vjp(
          lambda a, k, t: statistic(a, anchor_ids, k, key_ids, t),
          anchors, keys, temperature)
      d_anchors, d_keys, d_temperature = pullback(block_cotangent)
      return (totals[0] + d_anchors, totals[1] + d_temperature), d_keys

    (d_anchors, d_temperature), d_keys = jax.lax.scan(
        one_block, (jnp.zeros_like(anchors), jnp.zeros_like(temperature)),
        (jnp.arange(num_blocks), block_cotangents),
        unroll=_BLOCKS_PER_ITERATION)
    # d_keys[k] holds key block k's rows: its view-1 images, then view 2.
    d_keys1 = d_keys[:, :block_size].reshape(keys1.shape)
    d_keys2 = d_keys[:, block_size:].reshape(keys2.shape)
    return d_anchors, None, d_keys1, d_keys2, d_temperature

  streamed.defvjp(forward, backward)
  temperature = jnp.asarray(formula.key_temperature, block.anchors.dtype)
  return streamed(block.anchors, block.ids, views.keys1, views.keys2,
                  temperature)


def summed_anchor_losses(views: Views, formula: PairFormula,
                         block_size: Optional[int]) -> Array:
  """Sum of l_i over the views' 2n anchors.

  block_size: None computes all (2n, 2N) logits at once. An integer
  dividing n takes block_size images at a time, anchor blocks against key
  blocks: one (2b, 2b) logit block lives at a time and the backward pass
  keeps O(N) values per anchor block. Same value and gradients.
  """
  num_images = views.num_images

  def anchor_block_loss(block: AnchorBlock) -> Array:
    if block_size is None:
      key_stat = _key_block_statistic(
          block.anchors, block.ids,
          jnp.concatenate([views.keys1, views.keys2]),
          jnp.arange(2 * num_images), formula.key_temperature, formula,
          num_images=num_images)
    else:
      key_stat = _streamed_key_statistic(block, views, formula, block_size)
    return jnp.sum(formula.anchor_loss(
        key_stat, block.positive_similarities(), num_images=num_images,
        dim=block.anchors.shape[1]))

  return jnp.sum(map_anchor_blocks(anchor_block_loss, views, block_size))


def device_pair_loss(u1_local: Array, u2_local: Array, formula: PairFormula, *,
                     axis_name: Optional[str],
                     block_size: Optional[int]) -> Array:
  """The global batch loss from this device's rows (see `device_views`).

  Each device computes the losses of its own 2n anchors against all 2N
  keys; the psum of those sums over the axis, divided by 2N, is the global
  loss, identical on every device. `jax.grad` of this inside shard_map
  gives each device the global loss's gradient for its own rows.
  """
  views = device_views(u1_local, u2_local, axis_name)
  total = psum(summed_anchor_losses(views, formula, block_size), axis_name)
  return total / (2 * views.num_images)


# ---- splitting the anchors over the devices -----------------------------------


def data_devices(mesh: Optional[Mesh]) -> int:
  """The number of devices along the mesh's data axis (1 without a mesh)."""
  if mesh is None:
    return 1
  if mesh_lib.DATA_AXIS not in mesh.axis_names:
    raise ValueError(f"the mesh has axes {mesh.axis_names}, none named "
                     f"{mesh_lib.DATA_AXIS!r}; build it with "
                     "mio_jax.mesh.make_data_mesh.")
  return mesh.shape[mesh_lib.DATA_AXIS]


def split_over_devices(device_fn: Callable[..., Any], u1: Array, u2: Array, *,
                       mesh: Optional[Mesh]) -> Any:
  """device_fn(u1_local, u2_local, axis_name=...) -> global result, run so
  that each device of the data axis handles its own rows.

  With no mesh or one device along the data axis, device_fn sees the whole
  batch with axis_name None. Otherwise the (N, d) views are split over the
  data axis by `jax.shard_map` (N must divide evenly) and device_fn must
  return values that are the same on every device (psum-ed).
  """
  num_devices = data_devices(mesh)
  if num_devices == 1:
    return device_fn(u1, u2, axis_name=None)
  if u1.shape[0] % num_devices:
    raise ValueError(
        f"a batch of {u1.shape[0]} images does not split over the "
        f"{num_devices} devices of the mesh's data axis; use a multiple of "
        f"{num_devices}.")
  batch = P(mesh_lib.DATA_AXIS)
  return jax.shard_map(
      functools.partial(device_fn, axis_name=mesh_lib.DATA_AXIS), mesh=mesh,
      in_specs=(batch, batch), out_specs=P())(u1, u2)


def pair_loss(u1: Array, u2: Array, formula: PairFormula, *,
              block_size: Optional[int] = None,
              mesh: Optional[Mesh] = None) -> Array:
  """The batch loss mean_i l_i of `formula` on (N, d) views u1, u2.

  mesh: with several devices along its data axis, each device takes the
  anchors of its own N / D images (`split_over_devices`); block_size then
  must divide N / D. Same value and gradients as on one device.
  Returns a float32 scalar (float64 for float64 inputs).
  """
  check_views(u1, u2)
  return split_over_devices(
      functools.partial(device_pair_loss, formula=formula,
                        block_size=block_size), u1, u2, mesh=mesh)
