"""The naive binary pair loss `bce`: the form of the public MIO code.

Per anchor i, with the notation of `_binary` (docs/loss.md):

    l_i = softplus(-a_i) + (1/M) sum_{k in K(i)} softplus(b_ik) + lambda R_i

Each positive pair counts twice (i -> p(i) and p(i) -> i), every ordered
negative pair once, each term a mean over its own pairs, as
`BCEWithLogitsLoss(reduction="mean")` over the positive and over the
negative logits gives. The partner is not among the negatives.
"""
from typing import Optional, Tuple

import jax
import jax.numpy as jnp

from mio_jax.losses import _binary
from mio_jax.losses import _pairs

Array = jax.Array


def _mean_softplus(key_stat: Array, num_negatives: int) -> Array:
  """(1/M) sum_k softplus(b_ik) from key_stat = sum_k softplus(b_ik)."""
  return key_stat / num_negatives


def _mean_softplus_weights(negative_logits: Array, is_negative: Array,
                           num_negatives: int) -> Array:
  """d/db_ik of (1/M) sum_k softplus(b_ik): sigmoid(b_ik) / M on K(i)."""
  return jnp.where(is_negative, jax.nn.sigmoid(negative_logits),
                   0.0) / num_negatives


BCE = _binary.NegativeTerm(key_reduction=_pairs.SOFTPLUS_SUM,
                           loss=_mean_softplus, weights=_mean_softplus_weights)


def formula(*, temperature, negative_temperature: Optional[float] = None,
            reg_weight: float = 0.0) -> _pairs.PairFormula:
  """The per-anchor formula of `bce_loss` for the pair engine.

  Raises InvalidValueError for tau_p or tau_n <= 0 or reg_weight < 0.
  """
  return _binary.formula(BCE, temperature=temperature,
                         negative_temperature=negative_temperature,
                         reg_weight=reg_weight)


def bce_loss(u1: Array, u2: Array, *, temperature: float = 0.5,
             negative_temperature: Optional[float] = None,
             reg_weight: float = 0.0,
             block_size: Optional[int] = None) -> Array:
  """The naive binary pair loss on one (global) batch.

  Args:
    u1, u2: (N, d) projector outputs of view 1 and view 2 (any float dtype,
      not normalised).
    temperature: tau_p, dividing the cosine similarity of positive pairs.
    negative_temperature: tau_n for negative pairs; None means tau_p.
    reg_weight: lambda, weight of the alignment regulariser R.
    block_size: None (dense) or the images per streamed block; as
      `mio_jax.losses.mio_loss`.

  Returns:
    The scalar loss (float32, or float64 for float64 inputs).

  Raises:
    InvalidValueError: a bad option or a block_size not dividing N.
    ValueError: u1, u2 not both (N, d) with N >= 2.
  """
  return _pairs.pair_loss(
      u1, u2, formula(temperature=temperature,
                      negative_temperature=negative_temperature,
                      reg_weight=reg_weight), block_size=block_size)


def bce_loss_grad(u1: Array, u2: Array, *, temperature: float = 0.5,
                  negative_temperature: Optional[float] = None,
                  reg_weight: float = 0.0) -> Tuple[Array, Array]:
  """(dL/du1, dL/du2) of `bce_loss` in closed form; see
  `_binary.closed_form_grad` (dense, a reference for tests)."""
  return _binary.closed_form_grad(
      BCE, u1, u2, temperature=temperature,
      negative_temperature=negative_temperature, reg_weight=reg_weight)
