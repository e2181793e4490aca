"""How well the pair classifier separates positives from negatives.

The pairs are those of the binary losses: 2N ordered positive pairs
(i, p(i)) and 2N * M ordered negative pairs (i, k), k in K(i). Computed
by the pair engine like the losses: dense or streamed in blocks, on one
device or with each device of a mesh taking its own anchors.
"""
import functools
import math
from typing import Dict, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from mio_jax.losses import _binary
from mio_jax.losses import _pairs

Array = jax.Array


class _PairSums(NamedTuple):
  """Sums over the loss's ordered pairs, the raw material of `pair_metrics`."""
  positive_sim: Array  # sum of s_{i,p(i)} over the 2N anchors
  positive_correct: Array  # number of positive pairs with s > 0
  negative_sim: Array  # sum of s_ik over the 2N * M negative pairs
  # float32: the 2N(2N - 2) negative pairs pass 2**31 (an int32's range)
  # above N = 23,170; each row's count (<= 2N) is exact in float32.
  negative_correct: Array  # number of negative pairs with s <= 0
  negative_critic_lse: Array  # logsumexp of s_ik / tau_p over the same pairs


def _logsumexp_over_devices(x: Array, axis_name: Optional[str]) -> Array:
  """logsumexp of a scalar over the devices of the axis, stably."""
  if axis_name is None:
    return x
  shift = jax.lax.stop_gradient(jax.lax.pmax(x, axis_name))
  return shift + jnp.log(jax.lax.psum(jnp.exp(x - shift), axis_name))


def _device_pair_sums(u1_local: Array, u2_local: Array, *,
                      axis_name: Optional[str], critic_temperature,
                      block_size: Optional[int]) -> _PairSums:
  """The global `_PairSums` from this device's rows (see
  `_pairs.device_views`), anchors and keys in blocks like the losses."""
  views = _pairs.device_views(u1_local, u2_local, axis_name)
  num_images = views.num_images

  def anchor_block_sums(block: _pairs.AnchorBlock) -> _PairSums:
    def key_block_sums(keys, key_ids):
      sims = _pairs.similarities(block.anchors, keys)
      negative = _pairs.key_mask(block.ids, key_ids, num_images=num_images,
                                 exclude_partner=True)
      return (jnp.sum(jnp.where(negative, sims, 0.0), axis=1),
              jnp.sum(negative & (sims <= 0), axis=1, dtype=jnp.float32),
              jax.nn.logsumexp(
                  jnp.where(negative, sims / critic_temperature, -jnp.inf),
                  axis=1))

    negative_sim, negative_correct, critic_lse = _pairs.map_key_blocks(
        key_block_sums, views, block_size)
    positive_sims = block.positive_similarities()
    return _PairSums(jnp.sum(positive_sims),
                     jnp.sum(positive_sims > 0, dtype=jnp.int32),
                     jnp.sum(negative_sim), jnp.sum(negative_correct),
                     jax.nn.logsumexp(critic_lse))

  blocks = _pairs.map_anchor_blocks(anchor_block_sums, views, block_size)
  totals = [_pairs.psum(jnp.sum(total), axis_name) for total in blocks[:-1]]
  return _PairSums(*totals, _logsumexp_over_devices(
      jax.nn.logsumexp(blocks.negative_critic_lse), axis_name))


def pair_metrics(u1: Array, u2: Array, *, temperature: float,
                 negative_temperature: Optional[float] = None,
                 block_size: Optional[int] = None,
                 mesh: Optional[Mesh] = None) -> Dict[str, Array]:
  """How well the binary pair classifier separates positives from negatives.

  A pair is predicted positive when its logit is > 0, i.e. its cosine
  similarity is > 0 (the sign does not depend on the temperature).

  Args:
    u1, u2: (N, d) projector outputs, as for the losses.
    temperature: tau_p; also the critic's scale in the MI estimate.
    negative_temperature: tau_n, only for `neg_logit`; None means tau_p.
    block_size: as `mio_loss` (None: all pairs at once); with a mesh it
      must divide the images per device.
    mesh: as `make_loss`: with several devices along its data axis each
      device takes the anchors of its own images (`jax.shard_map`).

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

  Raises:
    InvalidValueError: a temperature <= 0 or a bad block_size.
    ValueError: u1, u2 not both (N, d) with N >= 2.
  """
  _binary.check_options(temperature=temperature,
                        negative_temperature=negative_temperature,
                        reg_weight=0.0)
  num_images = _pairs.check_views(u1, u2)
  tau_n = _binary.negative_temperature_or_default(temperature,
                                                  negative_temperature)
  sums = _pairs.split_over_devices(
      functools.partial(_device_pair_sums, critic_temperature=temperature,
                        block_size=block_size), u1, u2, mesh=mesh)
  num_positive_pairs = 2 * num_images
  # A float: as a Python int it becomes an int32 operand, which overflows.
  num_negative_pairs = 2.0 * num_images * (2 * num_images - 2)
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
