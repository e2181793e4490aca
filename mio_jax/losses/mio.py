"""The MIO binary pair loss `mio` and its closed-form gradient.

The paper's improvement of the naive `bce` loss: the negative term is
replaced by its Jensen upper bound (docs/loss.md). Per anchor i, with the
notation of `_binary`:

    l_i = softplus(-a_i) + log(1 + (1/M) sum_{k in K(i)} exp(b_ik))
          + lambda R_i

computed as logaddexp(0, logsumexp_k b_ik - log M), never exp(b) directly.
"""
import math
from typing import Optional, Tuple

import jax
import jax.numpy as jnp

from mio_jax import errors
from mio_jax.losses import _binary
from mio_jax.losses import _pairs
from mio_jax.losses import bce

Array = jax.Array


def _jensen_bound(key_stat: Array, num_negatives: int) -> Array:
  """log(1 + (1/M) sum_k exp(b_ik)) from key_stat = logsumexp_k b_ik."""
  return jnp.logaddexp(0.0, key_stat - math.log(num_negatives))


def _jensen_bound_weights(negative_logits: Array, is_negative: Array,
                          num_negatives: int) -> Array:
  """d/db_ik of the bound: w_ik = exp(b_ik) / (M + sum_k' exp(b_ik')).

  A softmax over K(i) with an extra logit log M, computed from a logsumexp
  so nothing overflows.
  """
  masked = jnp.where(is_negative, negative_logits, -jnp.inf)
  log_normaliser = jnp.logaddexp(math.log(num_negatives),
                                 jax.nn.logsumexp(masked, axis=1))
  return jnp.exp(masked - log_normaliser[:, None])


MIO = _binary.NegativeTerm(key_reduction=_pairs.LOGSUMEXP, loss=_jensen_bound,
                           weights=_jensen_bound_weights)

# `variant` of the functions below: the binary loss they compute. "bce" is
# an alias of `bce.bce_loss` (and `bce.bce_loss_grad`) for callers that
# name the binary form by variant.
_VARIANTS = {"mio": MIO, "bce": bce.BCE}


def _negative_term(variant: str) -> _binary.NegativeTerm:
  errors.check_one_of("variant", variant, _VARIANTS)
  return _VARIANTS[variant]


def formula(*, temperature, negative_temperature: Optional[float] = None,
            reg_weight: float = 0.0) -> _pairs.PairFormula:
  """The per-anchor formula of `mio_loss` for the pair engine.

  Raises InvalidValueError for tau_p or tau_n <= 0 or reg_weight < 0.
  """
  return _binary.formula(MIO, temperature=temperature,
                         negative_temperature=negative_temperature,
                         reg_weight=reg_weight)


def mio_loss(u1: Array, u2: Array, *, variant: str = "mio",
             temperature: float = 0.5,
             negative_temperature: Optional[float] = None,
             reg_weight: float = 0.0,
             block_size: Optional[int] = None) -> Array:
  """The MIO binary pair loss on one (global) batch.

  Args:
    u1, u2: (N, d) projector outputs of view 1 and view 2 (any float dtype,
      not normalised). Inside jit on arrays sharded over the data axis this
      sees the global batch (`mio_jax.losses.make_loss(..., mesh=)` splits
      the anchors over the devices instead).
    variant: "mio", or "bce" for `bce.bce_loss` (an alias).
    temperature: tau_p, dividing the cosine similarity of positive pairs.
    negative_temperature: tau_n for negative pairs; None means tau_p.
    reg_weight: lambda, weight of the alignment regulariser R.
    block_size: None: all (2N, 2N) similarities at once. An integer dividing
      N: blocks of block_size images, anchors against keys one block pair at
      a time (per-block logsumexps merged; a `jax.custom_vjp` backward pass
      recomputes each block's logits once), so memory grows as
      O(N * block_size) instead of O(N^2); same value and gradients.

  Returns:
    The scalar loss (float32, or float64 for float64 inputs).

  Raises:
    InvalidValueError: an unknown variant, a bad option, or a block_size
      not dividing N.
    ValueError: u1, u2 not both (N, d) with N >= 2.
  """
  return _pairs.pair_loss(
      u1, u2, _binary.formula(_negative_term(variant), temperature=temperature,
                              negative_temperature=negative_temperature,
                              reg_weight=reg_weight), block_size=block_size)


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
  respect to its own rows. `make_loss(..., mesh=)` does this for any loss.

  Args:
    u1_local, u2_local: (n, d) this device's projector outputs.
    axis_name: the mesh axis the batch is split over (e.g. mesh.DATA_AXIS).
    variant, temperature, negative_temperature, reg_weight: as `mio_loss`.
    block_size: as `mio_loss`; must divide n (the device's anchors are
      streamed against all keys).
  """
  return _pairs.device_pair_loss(
      u1_local, u2_local,
      _binary.formula(_negative_term(variant), temperature=temperature,
                      negative_temperature=negative_temperature,
                      reg_weight=reg_weight),
      axis_name=axis_name, block_size=block_size)


def mio_loss_grad(u1: Array, u2: Array, *, variant: str = "mio",
                  temperature: float = 0.5,
                  negative_temperature: Optional[float] = None,
                  reg_weight: float = 0.0) -> Tuple[Array, Array]:
  """(dL/du1, dL/du2) of `mio_loss` in closed form (no autodiff).

  G = dL/dS for S = Z Z^T; dL/dZ = (G + G^T) Z; then through the
  normalisation (`_binary.closed_form_grad`). Derivation in docs/loss.md.
  Dense, O(N^2) memory: a reference for tests and for reading, not for
  training. variant "bce" is `bce.bce_loss_grad`. Returns float32 (float64
  for float64 inputs) gradients.
  """
  return _binary.closed_form_grad(
      _negative_term(variant), u1, u2, temperature=temperature,
      negative_temperature=negative_temperature, reg_weight=reg_weight)
