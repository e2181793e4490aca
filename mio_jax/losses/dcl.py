"""The decoupled contrastive loss `dcl` (a baseline).

    l_i = -a_i + logsumexp_{k in K(i)} s_ik / tau

NT-Xent with the positive partner left out of the denominator; the batch
loss is the mean over the 2N anchors.
"""
import dataclasses
from typing import Optional

import jax

from mio_jax.losses import _pairs
from mio_jax.losses import nt_xent

Array = jax.Array


def formula(*, temperature, negative_temperature: Optional[float] = None,
            reg_weight: float = 0.0) -> _pairs.PairFormula:
  """The per-anchor formula of `dcl_loss`: NT-Xent's without the partner.

  Raises InvalidValueError as `nt_xent.check_options`.
  """
  return dataclasses.replace(
      nt_xent.formula(temperature=temperature,
                      negative_temperature=negative_temperature,
                      reg_weight=reg_weight),
      exclude_partner=True)


def dcl_loss(u1: Array, u2: Array, *, temperature: float,
             block_size: Optional[int] = None) -> Array:
  """The decoupled contrastive loss on (N, d) views u1, u2; a float32 scalar.

  block_size: as `mio_jax.losses.mio_loss` (None: dense).
  Raises InvalidValueError for temperature <= 0 or a bad block_size.
  """
  return _pairs.pair_loss(u1, u2, formula(temperature=temperature),
                          block_size=block_size)
