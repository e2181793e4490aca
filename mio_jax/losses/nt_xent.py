"""SimCLR's NT-Xent loss `nt_xent` (a baseline).

    l_i = -a_i + logsumexp_{j != i} s_ij / tau,   a_i = s_{i,p(i)} / tau

a softmax cross-entropy whose denominator holds the partner and all
negatives; the batch loss is the mean over the 2N anchors.
"""
from typing import Optional

import jax

from mio_jax import errors
from mio_jax.losses import _pairs

Array = jax.Array


def check_options(*, temperature, negative_temperature: Optional[float],
                  reg_weight: float) -> None:
  """The contrastive baselines take one temperature > 0 and nothing else.

  Raises InvalidValueError for temperature <= 0, a negative_temperature or
  a non-zero reg_weight.
  """
  _pairs.check_hyperparameter("temperature", temperature)
  if negative_temperature is not None:
    raise errors.InvalidValueError(
        "negative_temperature", negative_temperature,
        "is not an option of the contrastive losses nt_xent and dcl (one "
        "temperature scales every logit)", "leave {key} unset (None)")
  if reg_weight != 0:
    raise errors.InvalidValueError(
        "reg_weight", reg_weight,
        "is not an option of the contrastive losses nt_xent and dcl (they "
        "have no alignment regulariser)", "set {key}=0")


def formula(*, temperature, negative_temperature: Optional[float] = None,
            reg_weight: float = 0.0) -> _pairs.PairFormula:
  """The per-anchor formula of `nt_xent_loss` for the pair engine.

  Raises InvalidValueError as `check_options`.
  """
  check_options(temperature=temperature,
                negative_temperature=negative_temperature,
                reg_weight=reg_weight)

  def anchor_loss(key_stat, positive_sim, *, num_images, dim):
    del num_images, dim  # the softmax cross-entropy needs neither
    return key_stat - positive_sim / temperature

  return _pairs.PairFormula(exclude_partner=False,
                            key_reduction=_pairs.LOGSUMEXP,
                            key_temperature=temperature,
                            anchor_loss=anchor_loss)


def nt_xent_loss(u1: Array, u2: Array, *, temperature: float,
                 block_size: Optional[int] = None) -> Array:
  """SimCLR's NT-Xent on (N, d) views u1, u2; a float32 scalar.

  block_size: as `mio_jax.losses.mio_loss` (None: dense).
  Raises InvalidValueError for temperature <= 0 or a bad block_size.
  """
  return _pairs.pair_loss(u1, u2, formula(temperature=temperature),
                          block_size=block_size)
