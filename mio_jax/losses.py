"""Pair losses on the projector outputs of two views: MIO and baselines.

The math contract is docs/loss.md (restating the project's MIO_LOSS
specification). Notation used throughout this module:

* a batch of N images, two views each; `u1`, `u2` are the (N, d) projector
  outputs. Stacked, the 2N rows are numbered 0..N-1 (view 1) and N..2N-1
  (view 2); row i's positive partner is p(i) = (i + N) mod 2N.
* every row is an *anchor*; every row is also a *key*. An anchor's negatives
  K(i) are all keys except itself and its partner (M = 2N - 2 of them).

All losses share one computation: a block of anchors, identified by their
global row ids, against a set of keys, also identified by global row ids,
reduced over the keys to one statistic per anchor (a logsumexp or a sum of
softplus). Because rows carry their ids, the same code serves the whole
batch on one device, each device's anchors against all-gathered keys inside
`jax.shard_map` (`sharded_mio_loss`), and blocks of keys streamed one at a
time (`block_size`, merging per-block statistics).

Similarities are computed in float32 (float64 when given float64) whatever
the input dtype, so bfloat16 models get float32 losses.
"""
import functools
import math
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp

Array = jax.Array

# Rows with a norm below this are divided by it instead of their norm, so an
# all-zero projection gives a zero unit vector instead of a NaN.
NORM_EPS = 1e-12

# Full float32 matmuls for the similarities: at default precision TPUs (one
# bfloat16 pass) and GPUs that allow TF32 round float32 matmul inputs to 8-10
# mantissa bits, and a 1e-3 similarity error is a 1e-2 logit error at
# tau = 0.1. The (2N x 2N x d) similarity matmul is tiny next to the encoder,
# so exactness is cheap.
_SIMILARITY_PRECISION = jax.lax.Precision.HIGHEST


def _similarities(a: Array, b: Array) -> Array:
  """(n, m) dot products of the rows of a and b at full precision."""
  return jnp.matmul(a, b.T, precision=_SIMILARITY_PRECISION)


# ---- the shared row computation -------------------------------------------


class _LossKind(NamedTuple):
  """How a loss reduces over its keys and forms the per-anchor loss."""
  key_reduction: str  # "logsumexp" of the key logits, or "softplus_sum" of them
  exclude_partner: bool  # whether the positive partner is left out of the keys
  uses_negative_temperature: bool  # keys scaled by tau_n (else by tau_p)


_KINDS = {
    "mio": _LossKind("logsumexp", True, True),
    "bce": _LossKind("softplus_sum", True, True),
    "nt_xent": _LossKind("logsumexp", False, False),
    "dcl": _LossKind("logsumexp", True, False),
}


def _compute_dtype(x: Array) -> jnp.dtype:
  """float32 for bfloat16/float16/float32 inputs, float64 for float64."""
  return jnp.promote_types(x.dtype, jnp.float32)


def normalize_rows(u: Array) -> Array:
  """u / max(||u||, eps) row-wise, in float32 (or float64) precision."""
  u = u.astype(_compute_dtype(u))
  # sqrt(max(|u|^2, eps^2)) = max(|u|, eps), but with a finite gradient at 0.
  squared_norm = jnp.sum(u * u, axis=-1, keepdims=True)
  return u * jax.lax.rsqrt(jnp.maximum(squared_norm, NORM_EPS**2))


def _check_batch(u1: Array, u2: Array) -> int:
  """Validates the view shapes (static) and returns N, the images per view."""
  if u1.ndim != 2 or u1.shape != u2.shape:
    raise ValueError(
        "u1 and u2 must both have shape (N, d); got "
        f"{u1.shape} and {u2.shape}.")
  if u1.shape[0] < 2:
    raise ValueError(
        f"a pair loss needs at least 2 images per batch (got N={u1.shape[0]}): "
        "with one image there are no negative pairs.")
  return u1.shape[0]


def _check_block_size(block_size: Optional[int], num_anchor_images: int,
                      num_images: int) -> None:
  """Blocks must tile both the local anchors and the global keys exactly."""
  if block_size is None:
    return
  if (not isinstance(block_size, int) or block_size < 1
      or num_anchor_images % block_size or num_images % block_size):
    raise ValueError(
        f"block_size={block_size!r} must be a positive integer dividing the "
        f"images per device ({num_anchor_images}) and the global batch "
        f"({num_images}); use a divisor such as a power of two, or None.")


def _map_image_blocks(block_fn: Callable[[Array, int], Any], num_images: int,
                      block_size: Optional[int]) -> Any:
  """block_fn(start, size) over consecutive image blocks, outputs stacked.

  block_size None is one block of all images (the dense computation). With
  an integer, blocks run one after the other (`lax.map`), and
  `jax.checkpoint` makes the backward pass recompute each block's
  intermediates (its logits) instead of storing them for every block.
  """
  if block_size is None:
    return jax.tree.map(lambda x: x[None], block_fn(0, num_images))
  return jax.lax.map(
      jax.checkpoint(lambda index: block_fn(index * block_size, block_size)),
      jnp.arange(num_images // block_size))


def _view_rows(z_view1: Array, z_view2: Array, start, size: int, *,
               first_image, num_images: int) -> Tuple[Array, Array]:
  """Images [start, start + size) of two (n, d) view arrays as 2 * size rows.

  Returns the rows (view 1 then view 2) and their global row ids;
  `first_image` is the global batch index of the arrays' row 0.
  """
  images = first_image + start + jnp.arange(size)
  rows = [jax.lax.dynamic_slice_in_dim(z, start, size)
          for z in (z_view1, z_view2)]
  return jnp.concatenate(rows), jnp.concatenate([images, images + num_images])


def _key_mask(anchor_ids: Array, key_ids: Array, *, num_images: int,
              exclude_partner: bool) -> Array:
  """(n, m) bool: True where key j counts in the reduction for anchor i."""
  anchor_ids = anchor_ids[:, None]
  key_ids = key_ids[None, :]
  keep = key_ids != anchor_ids
  if exclude_partner:
    keep &= key_ids != (anchor_ids + num_images) % (2 * num_images)
  return keep


def _key_statistic(anchors: Array, anchor_ids: Array, keys: Array,
                   key_ids: Array, *, num_images: int, temperature: float,
                   kind: _LossKind) -> Array:
  """Per-anchor reduction of the logits s_ij / temperature over the keys.

  Args:
    anchors: (n, d) unit vectors.
    anchor_ids: (n,) their global row ids in [0, 2N).
    keys: (m, d) unit vectors (all 2N rows, or one block of them).
    key_ids: (m,) their global row ids.
    num_images: N.
    temperature: the scale of these logits.
    kind: which keys count and how they are reduced.

  Returns:
    (n,) logsumexp_j(logit_ij) or sum_j softplus(logit_ij) over the kept keys.
    A block with no kept key gives -inf (logsumexp) or 0 (sum), which
    leave the other blocks' statistics unchanged when merged.
  """
  logits = _similarities(anchors, keys) / temperature
  keep = _key_mask(anchor_ids, key_ids, num_images=num_images,
                   exclude_partner=kind.exclude_partner)
  if kind.key_reduction == "logsumexp":
    # Masked entries become -inf before the max-shifted exponentials, so no
    # exp(logit) is ever formed unshifted.
    return jax.nn.logsumexp(jnp.where(keep, logits, -jnp.inf), axis=1)
  return jnp.sum(jnp.where(keep, jax.nn.softplus(logits), 0.0), axis=1)


def _anchor_losses(anchors: Array, partners: Array, key_stat: Array, *,
                   name: str, num_images: int, temperature: float,
                   reg_weight: float) -> Array:
  """(n,) per-anchor losses l_i; the batch loss is their mean over 2N anchors.

  Args:
    anchors: (n, d) unit vectors z_i.
    partners: (n, d) unit vectors z_p(i), row by row.
    key_stat: (n,) the `_key_statistic` of these anchors over all keys.
    name: the loss ("mio", "bce", "nt_xent", "dcl").
    num_images: N.
    temperature: tau_p, the scale of the positive logit.
    reg_weight: lambda of the alignment regulariser (mio, bce).
  """
  positive_sim = jnp.sum(anchors * partners, axis=1)
  positive_logit = positive_sim / temperature
  if name in ("nt_xent", "dcl"):
    return key_stat - positive_logit
  num_negatives = 2 * num_images - 2
  if name == "mio":
    negative_term = jnp.logaddexp(0.0, key_stat - math.log(num_negatives))
  else:  # bce
    negative_term = key_stat / num_negatives
  # R = (1/(N d)) sum_n ||z_n - z_{n+N}||^2, spread evenly over both anchors
  # of each positive pair: ||z_i - z_p(i)||^2 = 2 - 2 s_{i,p(i)}.
  alignment = (2.0 - 2.0 * positive_sim) / anchors.shape[1]
  return (jax.nn.softplus(-positive_logit) + negative_term
          + reg_weight * alignment)


def _merge_key_stats(block_stats: Array, kind: _LossKind) -> Array:
  """Merges (num_key_blocks, n) statistics of disjoint key blocks into (n,)."""
  if kind.key_reduction == "logsumexp":
    return jax.nn.logsumexp(block_stats, axis=0)
  return jnp.sum(block_stats, axis=0)


def _summed_anchor_losses(z_anchor1: Array, z_anchor2: Array, image_offset,
                          z_keys1: Array, z_keys2: Array, *, name: str,
                          temperature: float,
                          negative_temperature: Optional[float],
                          reg_weight: float,
                          block_size: Optional[int]) -> Array:
  """Sum of l_i over the anchors of images [offset, offset + n) in both views.

  Args:
    z_anchor1, z_anchor2: (n, d) unit vectors of the anchor images' two views.
    image_offset: index of the first anchor image in the global batch.
    z_keys1, z_keys2: (N, d) unit vectors of every image's two views.
    name, temperature, negative_temperature, reg_weight: the loss.
    block_size: None computes all (2n, 2N) logits at once. An integer
      dividing n and N takes block_size images at a time, anchor blocks
      against key blocks: one (2b, 2b) logit block lives at a time and the
      backward pass keeps O(N) values per anchor block. Same value and
      gradients.
  The dense loss calls this with all images; each device inside shard_map
  calls it with its own images against the all-gathered keys.
  """
  kind = _KINDS[name]
  num_images = z_keys1.shape[0]
  _check_block_size(block_size, z_anchor1.shape[0], num_images)
  key_temperature = (
      _negative_temperature(temperature, negative_temperature)
      if kind.uses_negative_temperature else temperature)

  def anchor_block_loss(anchor_start, anchor_size):
    anchors, anchor_ids = _view_rows(
        z_anchor1, z_anchor2, anchor_start, anchor_size,
        first_image=image_offset, num_images=num_images)
    partners, _ = _view_rows(z_anchor2, z_anchor1, anchor_start, anchor_size,
                             first_image=image_offset, num_images=num_images)

    def key_block_statistic(key_start, key_size):
      keys, key_ids = _view_rows(z_keys1, z_keys2, key_start, key_size,
                                 first_image=0, num_images=num_images)
      return _key_statistic(anchors, anchor_ids, keys, key_ids,
                            num_images=num_images,
                            temperature=key_temperature, kind=kind)

    key_stat = _merge_key_stats(
        _map_image_blocks(key_block_statistic, num_images, block_size), kind)
    return jnp.sum(_anchor_losses(
        anchors, partners, key_stat, name=name, num_images=num_images,
        temperature=temperature, reg_weight=reg_weight))

  return jnp.sum(_map_image_blocks(anchor_block_loss, z_anchor1.shape[0],
                                   block_size))


def _negative_temperature(temperature, negative_temperature):
  return temperature if negative_temperature is None else negative_temperature


def _check_positive(key: str, value) -> None:
  """Rejects a non-positive hyperparameter when it is known at trace time."""
  if isinstance(value, (int, float)) and not value > 0:
    raise ValueError(f"{key} must be > 0, got {value!r}.")


def _check_options(variant: str, temperature, negative_temperature,
                   reg_weight) -> None:
  """Rejects a bad variant or hyperparameters that are known at trace time."""
  if variant not in ("mio", "bce"):
    raise ValueError(f"variant must be 'mio' or 'bce', got {variant!r}.")
  _check_positive("temperature", temperature)
  _check_positive("negative_temperature", negative_temperature)
  if isinstance(reg_weight, (int, float)) and not reg_weight >= 0:
    raise ValueError(f"reg_weight must be >= 0, got {reg_weight!r}.")


# ---- public losses ----------------------------------------------------------


def mio_loss(u1: Array, u2: Array, *, variant: str = "mio",
             temperature: float = 0.5,
             negative_temperature: Optional[float] = None,
             reg_weight: float = 0.0,
             block_size: Optional[int] = None) -> Array:
  """The MIO binary pair loss on one (global) batch.

  Args:
    u1, u2: (N, d) projector outputs of view 1 and view 2 (any float dtype,
      not normalised). Inside jit on arrays sharded over the data axis this
      sees the global batch.
    variant: "mio" (positive partner excluded from the negatives, Jensen
      upper bound of the negative term) or "bce" (the naive BCE form of the
      public code, also with the partner excluded).
    temperature: tau_p, dividing the cosine similarity of positive pairs.
    negative_temperature: tau_n for negative pairs; None means tau_p.
    reg_weight: lambda, weight of the alignment regulariser R.
    block_size: None: all (2N, 2N) similarities at once. An integer dividing
      N: blocks of block_size images, anchors against keys one block pair at
      a time (per-block logsumexps merged, `jax.checkpoint` in the backward
      pass), so memory grows as O(N * block_size) instead of O(N^2); same
      value and gradients.

  Returns:
    The scalar loss (float32, or float64 for float64 inputs).
  """
  _check_options(variant, temperature, negative_temperature, reg_weight)
  num_images = _check_batch(u1, u2)
  z1, z2 = normalize_rows(u1), normalize_rows(u2)
  total = _summed_anchor_losses(
      z1, z2, 0, z1, z2, name=variant, temperature=temperature,
      negative_temperature=negative_temperature, reg_weight=reg_weight,
      block_size=block_size)
  return total / (2 * num_images)


def sharded_mio_loss(u1_local: Array, u2_local: Array, *, axis_name: str,
                     variant: str = "mio", temperature: float = 0.5,
                     negative_temperature: Optional[float] = None,
                     reg_weight: float = 0.0,
                     block_size: Optional[int] = None) -> Array:
  """`mio_loss` of the global batch, called per device inside `jax.shard_map`.

  Each device holds the same number n of images (both views, the rows
  [axis_index * n, (axis_index + 1) * n) of the global batch). It
  normalises them, all-gathers the unit vectors of every device as keys,
  computes the losses of its own 2n anchors and psums: the result is the
  global loss, identical on every device. Gradients flow back through the
  all-gather (its transpose is a reduce-scatter), so `jax.grad` of this
  inside shard_map gives each device the global loss's gradient with
  respect to its own rows.

  Args:
    u1_local, u2_local: (n, d) this device's projector outputs.
    axis_name: the mesh axis the batch is split over (e.g. mesh.DATA_AXIS).
    variant, temperature, negative_temperature, reg_weight: as `mio_loss`.
    block_size: as `mio_loss`; must divide n (the device's anchors are
      streamed against all keys).
  """
  _check_options(variant, temperature, negative_temperature, reg_weight)
  n = u1_local.shape[0]
  if u1_local.ndim != 2 or u1_local.shape != u2_local.shape:
    raise ValueError("u1_local and u2_local must both have shape (n, d); got "
                     f"{u1_local.shape} and {u2_local.shape}.")
  num_devices = jax.lax.axis_size(axis_name)
  num_images = n * num_devices
  if num_images < 2:
    raise ValueError("a pair loss needs at least 2 images in the global batch.")
  z1, z2 = normalize_rows(u1_local), normalize_rows(u2_local)
  gather = functools.partial(jax.lax.all_gather, axis_name=axis_name,
                             tiled=True)
  local_total = _summed_anchor_losses(
      z1, z2, jax.lax.axis_index(axis_name) * n, gather(z1), gather(z2),
      name=variant, temperature=temperature,
      negative_temperature=negative_temperature, reg_weight=reg_weight,
      block_size=block_size)
  return jax.lax.psum(local_total, axis_name) / (2 * num_images)


def _baseline_loss(name: str, u1: Array, u2: Array, temperature: float,
                   block_size: Optional[int]) -> Array:
  _check_positive("temperature", temperature)
  num_images = _check_batch(u1, u2)
  z1, z2 = normalize_rows(u1), normalize_rows(u2)
  total = _summed_anchor_losses(
      z1, z2, 0, z1, z2, name=name, temperature=temperature,
      negative_temperature=None, reg_weight=0.0, block_size=block_size)
  return total / (2 * num_images)


def nt_xent_loss(u1: Array, u2: Array, *, temperature: float,
                 block_size: Optional[int] = None) -> Array:
  """SimCLR's NT-Xent: l_i = -a_i + logsumexp_{j != i} s_ij / tau, mean over 2N.

  block_size: as `mio_loss` (None: dense).
  """
  return _baseline_loss("nt_xent", u1, u2, temperature, block_size)


def dcl_loss(u1: Array, u2: Array, *, temperature: float,
             block_size: Optional[int] = None) -> Array:
  """Decoupled contrastive loss: as NT-Xent with the positive left out of the
  denominator, l_i = -a_i + logsumexp_{k in K(i)} s_ik / tau.

  block_size: as `mio_loss` (None: dense).
  """
  return _baseline_loss("dcl", u1, u2, temperature, block_size)


# ---- closed-form gradient ---------------------------------------------------


def mio_loss_grad(u1: Array, u2: Array, *, variant: str = "mio",
                  temperature: float = 0.5,
                  negative_temperature: Optional[float] = None,
                  reg_weight: float = 0.0) -> Tuple[Array, Array]:
  """(dL/du1, dL/du2) of `mio_loss` in closed form (no autodiff).

  G = dL/dS for S = Z Z^T; dL/dZ = (G + G^T) Z; then through the
  normalisation dL/du_i = (I - z_i z_i^T) dL/dz_i / ||u_i|| (rows with
  ||u_i|| < eps are only divided by eps: dL/du_i = dL/dz_i / eps).
  Derivation in docs/loss.md. Dense, O(N^2) memory: a reference for tests
  and for reading, not for training. Returns float32 (float64 for float64
  inputs) gradients.
  """
  _check_options(variant, temperature, negative_temperature, reg_weight)
  num_images = _check_batch(u1, u2)
  tau_p = temperature
  tau_n = _negative_temperature(temperature, negative_temperature)
  num_rows = 2 * num_images
  num_negatives = num_rows - 2
  u = jnp.concatenate([u1, u2]).astype(_compute_dtype(u1))
  norms = jnp.linalg.norm(u, axis=1, keepdims=True)
  z = u / jnp.maximum(norms, NORM_EPS)
  sims = _similarities(z, z)
  ids = jnp.arange(num_rows)
  partner_ids = (ids + num_images) % num_rows
  is_partner = ids[None, :] == partner_ids[:, None]
  is_negative = _key_mask(ids, ids, num_images=num_images, exclude_partner=True)

  positive_logits = sims[ids, partner_ids] / tau_p
  negative_logits = sims / tau_n
  # Attraction of the partner: d softplus(-a)/da = -sigmoid(-a).
  positive_weight = -jax.nn.sigmoid(-positive_logits) / (num_rows * tau_p)
  if variant == "mio":
    # w_ik = exp(b_ik) / (M + sum_k' exp(b_ik')): a softmax over K(i) with an
    # extra logit log M, computed from a logsumexp so nothing overflows.
    masked = jnp.where(is_negative, negative_logits, -jnp.inf)
    log_normaliser = jnp.logaddexp(math.log(num_negatives),
                                   jax.nn.logsumexp(masked, axis=1))
    negative_weights = jnp.exp(masked - log_normaliser[:, None]) / (
        num_rows * tau_n)
  else:
    negative_weights = jnp.where(
        is_negative, jax.nn.sigmoid(negative_logits), 0.0) / (
            num_rows * num_negatives * tau_n)
  # The regulariser's -2 lambda / (N d) on G[n, n + N], written here as
  # -lambda / (N d) on both G[i, p(i)] and G[p(i), i]: same G + G^T.
  partner_weight = positive_weight - reg_weight / (num_images * u.shape[1])
  grad_sims = negative_weights + jnp.where(is_partner, partner_weight[:, None],
                                           0.0)
  grad_z = jnp.matmul(grad_sims + grad_sims.T, z,
                      precision=_SIMILARITY_PRECISION)
  radial = jnp.sum(grad_z * z, axis=1, keepdims=True)
  # Below eps the row is only scaled (u / eps), so nothing is projected out.
  grad_u = jnp.where(norms >= NORM_EPS, (grad_z - radial * z) / norms,
                     grad_z / NORM_EPS)
  return grad_u[:num_images], grad_u[num_images:]


# ---- registry ---------------------------------------------------------------


LOSSES: Dict[str, Callable[..., Array]] = {
    "mio": functools.partial(mio_loss, variant="mio"),
    "bce": functools.partial(mio_loss, variant="bce"),
    "nt_xent": nt_xent_loss,
    "dcl": dcl_loss,
}


def make_loss(name: str, *, temperature: float,
              negative_temperature: Optional[float] = None,
              reg_weight: float = 0.0,
              block_size: Optional[int] = None
              ) -> Callable[[Array, Array], Array]:
  """The loss `name` (config.loss) as a function (u1, u2) -> scalar.

  block_size: None (dense) or the number of images per streamed block (see
  `mio_loss`); it must divide the batch, which is checked when called.

  Raises ValueError for an unknown name (listing LOSSES), a non-positive
  temperature or block_size, or options the loss does not take (reg_weight
  and negative_temperature exist only for "mio" and "bce").
  """
  if name not in LOSSES:
    raise ValueError(
        f"unknown loss {name!r}; valid names: {', '.join(LOSSES)}.")
  if not (isinstance(temperature, (int, float)) and temperature > 0):
    raise ValueError(f"temperature must be > 0, got {temperature!r}.")
  if block_size is not None and not (isinstance(block_size, int)
                                     and block_size > 0):
    raise ValueError(
        f"block_size must be None or a positive integer, got {block_size!r}.")
  if name in ("mio", "bce"):
    _check_options(name, temperature, negative_temperature, reg_weight)
    return functools.partial(LOSSES[name], temperature=temperature,
                             negative_temperature=negative_temperature,
                             reg_weight=reg_weight, block_size=block_size)
  unsupported = []
  if negative_temperature is not None:
    unsupported.append(f"negative_temperature={negative_temperature!r}")
  if reg_weight != 0:
    unsupported.append(f"reg_weight={reg_weight!r}")
  if unsupported:
    raise ValueError(
        f"loss {name!r} does not take {', '.join(unsupported)}; only 'mio' and "
        "'bce' do. Leave negative_temperature unset and reg_weight at 0.")
  return functools.partial(LOSSES[name], temperature=temperature,
                           block_size=block_size)


# ---- pair metrics -----------------------------------------------------------


class _PairSums(NamedTuple):
  """Sums over the loss's ordered pairs, the raw material of `pair_metrics`."""
  positive_sim: Array  # sum of s_{i,p(i)} over the 2N anchors
  positive_correct: Array  # number of positive pairs with s > 0
  negative_sim: Array  # sum of s_ik over the 2N * M negative pairs
  negative_correct: Array  # number of negative pairs with s <= 0
  negative_critic_lse: Array  # logsumexp of s_ik / tau_p over the same pairs


def _pair_sums(z1: Array, z2: Array, *, critic_temperature: float,
               block_size: Optional[int]) -> _PairSums:
  """`_PairSums` of unit vectors z1, z2 (N, d), in blocks like the losses."""
  num_images = z1.shape[0]
  _check_block_size(block_size, num_images, num_images)
  rows = functools.partial(_view_rows, first_image=0, num_images=num_images)

  def anchor_block_sums(anchor_start, anchor_size):
    anchors, anchor_ids = rows(z1, z2, anchor_start, anchor_size)
    partners, _ = rows(z2, z1, anchor_start, anchor_size)

    def key_block_sums(key_start, key_size):
      keys, key_ids = rows(z1, z2, key_start, key_size)
      sims = _similarities(anchors, keys)
      negative = _key_mask(anchor_ids, key_ids, num_images=num_images,
                           exclude_partner=True)
      return (jnp.sum(jnp.where(negative, sims, 0.0), axis=1),
              jnp.sum(negative & (sims <= 0), axis=1, dtype=jnp.int32),
              jax.nn.logsumexp(
                  jnp.where(negative, sims / critic_temperature, -jnp.inf),
                  axis=1))

    negative_sim, negative_correct, critic_lse = _map_image_blocks(
        key_block_sums, num_images, block_size)
    positive_sims = jnp.sum(anchors * partners, axis=1)
    return _PairSums(jnp.sum(positive_sims),
                     jnp.sum(positive_sims > 0, dtype=jnp.int32),
                     jnp.sum(negative_sim), jnp.sum(negative_correct),
                     jax.nn.logsumexp(critic_lse))

  blocks = _map_image_blocks(anchor_block_sums, num_images, block_size)
  return _PairSums(*(jnp.sum(total) for total in blocks[:-1]),
                   jax.nn.logsumexp(blocks.negative_critic_lse))


def pair_metrics(u1: Array, u2: Array, *, temperature: float,
                 negative_temperature: Optional[float] = None,
                 block_size: Optional[int] = None) -> Dict[str, Array]:
  """How well the binary pair classifier separates positives from negatives.

  Pairs are those of the loss: 2N ordered positive pairs (i, p(i)) and
  2N * M ordered negative pairs (i, k), k in K(i). A pair is predicted
  positive when its logit is > 0, i.e. its cosine similarity is > 0 (the
  sign does not depend on the temperature).

  Args:
    u1, u2: (N, d) projector outputs, as for the losses.
    temperature: tau_p; also the critic's scale in the MI estimate.
    negative_temperature: tau_n, only for `neg_logit`; None means tau_p.
    block_size: as `mio_loss` (None: all pairs at once).

  Returns a dict of scalars:
    pos_sim, neg_sim: mean cosine similarity of positive / negative pairs.
    pos_logit, neg_logit: mean logits a_i = s/tau_p, b_ik = s/tau_n.
    pos_accuracy, neg_accuracy: fraction of positive (negative) pairs the
      classifier gets right.
    pair_accuracy: balanced accuracy, their mean (the classes are 1 : M
      unbalanced, so the plain accuracy would be dominated by negatives).
    mi_estimate: Donsker-Varadhan estimate (nats) of the mutual information
      between the views' embeddings with critic T = s / tau_p:
      mean_pos T - log mean_neg exp(T). A lower bound on I for exact
      expectations; here a batch estimate (see docs/loss.md).
  """
  for key, value in (("temperature", temperature),
                     ("negative_temperature", negative_temperature)):
    _check_positive(key, value)
  num_images = _check_batch(u1, u2)
  tau_n = _negative_temperature(temperature, negative_temperature)
  sums = _pair_sums(normalize_rows(u1), normalize_rows(u2),
                    critic_temperature=temperature, block_size=block_size)
  num_positive_pairs = 2 * num_images
  num_negative_pairs = 2 * num_images * (2 * num_images - 2)
  pos_sim = sums.positive_sim / num_positive_pairs
  neg_sim = sums.negative_sim / num_negative_pairs
  pos_accuracy = sums.positive_correct / num_positive_pairs
  neg_accuracy = sums.negative_correct / num_negative_pairs
  return {
      "pos_sim": pos_sim,
      "neg_sim": neg_sim,
      "pos_logit": pos_sim / temperature,
      "neg_logit": neg_sim / tau_n,
      "pos_accuracy": pos_accuracy.astype(pos_sim.dtype),
      "neg_accuracy": neg_accuracy.astype(pos_sim.dtype),
      "pair_accuracy": ((pos_accuracy + neg_accuracy) / 2).astype(
          pos_sim.dtype),
      "mi_estimate": pos_sim / temperature - (
          sums.negative_critic_lse - math.log(num_negative_pairs)),
  }
