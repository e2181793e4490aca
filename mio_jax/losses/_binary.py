"""What the two binary pair losses, `mio` and `bce`, share.

Both classify every pair with the logit of its scaled cosine similarity.
Per anchor i (docs/loss.md):

    l_i = softplus(-a_i) + negative_term_i + lambda * R_i

with a_i = s_{i,p(i)} / tau_p, negatives K(i) = all keys but i and p(i)
(M = 2N - 2 of them) with logits b_ik = s_ik / tau_n, and
R_i = ||z_i - z_p(i)||^2 / d = (2 - 2 s_{i,p(i)}) / d, which spreads the
alignment regulariser R = (1/(N d)) sum_n ||z_n - z_{n+N}||^2 evenly over
both anchors of each positive pair. The two losses differ only in the
negative term (a `NegativeTerm`); this module builds the rest, the pair
formula and the closed-form gradient, around it.
"""
from typing import Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp

from mio_jax.losses import _pairs

Array = jax.Array


class NegativeTerm(NamedTuple):
  """A binary loss's repulsion of the negatives K(i), b_ik = s_ik / tau_n.

  key_reduction: how the b_ik of one anchor reduce to one statistic.
  loss: ((n,) key statistics, M) -> (n,) negative terms.
  weights: (b (2N, 2N), is_negative (2N, 2N) bool, M) -> (2N, 2N)
    d negative_term_i / d b_ik, zero outside K(i); for the closed-form
    gradient.
  """
  key_reduction: _pairs.KeyReduction
  loss: Callable[[Array, int], Array]
  weights: Callable[[Array, Array, int], Array]


def negative_temperature_or_default(temperature, negative_temperature):
  """tau_n: negative_temperature, or tau_p when it is None."""
  return temperature if negative_temperature is None else negative_temperature


def check_options(*, temperature, negative_temperature, reg_weight) -> None:
  """Raises InvalidValueError for tau_p or tau_n <= 0 or lambda < 0
  (values known at trace time)."""
  _pairs.check_hyperparameter("temperature", temperature)
  if negative_temperature is not None:
    _pairs.check_hyperparameter("negative_temperature", negative_temperature)
  _pairs.check_hyperparameter("reg_weight", reg_weight, allow_zero=True)


def formula(negative: NegativeTerm, *, temperature,
            negative_temperature: Optional[float] = None,
            reg_weight: float = 0.0) -> _pairs.PairFormula:
  """The pair formula of a binary loss with this negative term.

  Raises InvalidValueError for a bad option (see `check_options`).
  """
  check_options(temperature=temperature,
                negative_temperature=negative_temperature,
                reg_weight=reg_weight)

  def anchor_loss(key_stat, positive_sim, *, num_images, dim):
    alignment = (2.0 - 2.0 * positive_sim) / dim
    return (jax.nn.softplus(-positive_sim / temperature)
            + negative.loss(key_stat, 2 * num_images - 2)
            + reg_weight * alignment)

  return _pairs.PairFormula(
      exclude_partner=True, key_reduction=negative.key_reduction,
      key_temperature=negative_temperature_or_default(
          temperature, negative_temperature),
      anchor_loss=anchor_loss)


def closed_form_grad(negative: NegativeTerm, u1: Array, u2: Array, *,
                     temperature, negative_temperature: Optional[float],
                     reg_weight: float) -> Tuple[Array, Array]:
  """(dL/du1, dL/du2) of the binary loss in closed form (no autodiff).

  G = dL/dS for S = Z Z^T; dL/dZ = (G + G^T) Z; then through the
  normalisation dL/du_i = (I - z_i z_i^T) dL/dz_i / ||u_i|| (rows with
  ||u_i|| < eps are only divided by eps: dL/du_i = dL/dz_i / eps).
  Derivation in docs/loss.md. Dense, O(N^2) memory: a reference for tests
  and for reading, not for training. Returns float32 (float64 for float64
  inputs) gradients.

  Raises InvalidValueError for a bad option, ValueError for bad shapes.
  """
  check_options(temperature=temperature,
                negative_temperature=negative_temperature,
                reg_weight=reg_weight)
  num_images = _pairs.check_views(u1, u2)
  tau_p = temperature
  tau_n = negative_temperature_or_default(temperature, negative_temperature)
  num_rows = 2 * num_images
  u = jnp.concatenate([u1, u2]).astype(_pairs.compute_dtype(u1))
  norms = jnp.linalg.norm(u, axis=1, keepdims=True)
  z = u / jnp.maximum(norms, _pairs.NORM_EPS)
  sims = _pairs.similarities(z, z)
  ids = jnp.arange(num_rows)
  partner_ids = (ids + num_images) % num_rows
  is_partner = ids[None, :] == partner_ids[:, None]
  is_negative = _pairs.key_mask(ids, ids, num_images=num_images,
                                exclude_partner=True)

  # Attraction of the partner: d softplus(-a)/da = -sigmoid(-a).
  positive_logits = sims[ids, partner_ids] / tau_p
  positive_weight = -jax.nn.sigmoid(-positive_logits) / (num_rows * tau_p)
  negative_weights = negative.weights(
      sims / tau_n, is_negative, num_rows - 2) / (num_rows * tau_n)
  # The regulariser's -2 lambda / (N d) on G[n, n + N], written here as
  # -lambda / (N d) on both G[i, p(i)] and G[p(i), i]: same G + G^T.
  partner_weight = positive_weight - reg_weight / (num_images * u.shape[1])
  grad_sims = negative_weights + jnp.where(is_partner, partner_weight[:, None],
                                           0.0)
  grad_z = jnp.matmul(grad_sims + grad_sims.T, z,
                      precision=_pairs.SIMILARITY_PRECISION)
  radial = jnp.sum(grad_z * z, axis=1, keepdims=True)
  # Below eps the row is only scaled (u / eps), so nothing is projected out.
  grad_u = jnp.where(norms >= _pairs.NORM_EPS, (grad_z - radial * z) / norms,
                     grad_z / _pairs.NORM_EPS)
  return grad_u[:num_images], grad_u[num_images:]

