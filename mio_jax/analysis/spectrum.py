"""Hessian spectra of a scalar loss from Hessian-vector products.

Model-agnostic: `flat_hessian(loss_fn, params)` wraps `loss_fn(params) ->
scalar` (the batch and any fixed state closed over) at a parameter pytree
into a matvec that the eigensolvers below share (one compilation), and the
Hessian is never formed. The Hessian-vector product is forward-over-reverse differentiation,
`jax.jvp` of `jax.grad`, which costs about two gradient evaluations. The
eigensolver and the tridiagonal eigenproblem run in float64 NumPy/SciPy; the
JAX side runs in the dtype of `params` (float32 unless 64-bit mode is on), so
float32 products carry relative noise of about 1e-6 of the largest
eigenvalue.

* `top_eigenvalues`: ARPACK Lanczos (`scipy.sparse.linalg.eigsh`) on a
  `LinearOperator` whose matvec is the flattened Hessian-vector product.
* `spectral_density`: stochastic Lanczos quadrature (Ghorbani et al. 2019,
  Papyan 2018): Rademacher probes, a Lanczos tridiagonalisation per probe,
  Gauss quadrature nodes/weights from its eigen-decomposition, Gaussian
  broadening.
* `restrict_to_subset`: the Hessian with respect to some top-level parameter
  groups (e.g. the projector) with the others held fixed: a diagonal block of
  the full Hessian.
"""
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import scipy.sparse.linalg
from jax.flatten_util import ravel_pytree

Params = Any
LossFn = Callable[[Params], jax.Array]
# Which end of the spectrum `top_eigenvalues` returns (scipy's `which`).
EIGSH_WHICH = {
    "LA": "largest algebraic: the sharpest directions of positive curvature",
    "SA": "smallest algebraic: the most negative curvature",
    "LM": "largest magnitude: either sign, e.g. to see negative curvature "
          "that rivals the top positive eigenvalues",
}


# TPUs (and GPUs with TF32) multiply float32 matrices in reduced precision by
# default, about 1e-3 relative: too coarse for eigenvalue estimates.
MATMUL_PRECISION = "highest"


def _hvp(loss_fn: LossFn, point: Params, tangent: Params) -> Params:
  """Forward-over-reverse (`jax.jvp` of `jax.grad`): the cheapest exact
  Hessian-vector product, with no finite-difference step to tune."""
  with jax.default_matmul_precision(MATMUL_PRECISION):
    return jax.jvp(jax.grad(loss_fn), (point,), (tangent,))[1]


def hvp_fn(loss_fn: LossFn, params: Params) -> Callable[[Params], Params]:
  """Returns the jitted map `v -> H v` at `params`, with `v` a pytree like `params`."""
  def product(point: Params, tangent: Params) -> Params:
    return _hvp(loss_fn, point, tangent)

  jitted = jax.jit(product)
  return lambda tangent: jitted(params, tangent)


class FlatHessian(NamedTuple):
  """The Hessian at a point as a float64 NumPy matvec on flat vectors.

  dtype: the dtype the products are computed in (that of the parameters).
  """
  matvec: Callable[[np.ndarray], np.ndarray]
  dim: int
  dtype: np.dtype


def flat_hessian(loss_fn: LossFn, params: Params) -> FlatHessian:
  """The Hessian as a float64 NumPy matvec over `ravel_pytree(params)` order.

  Vectors are cast to the dtype of the parameters for the product (float32
  unless 64-bit mode is on) and back to float64 for the eigensolvers.
  """
  flat_params, unravel = ravel_pytree(params)
  dtype = flat_params.dtype

  @jax.jit
  def flat_product(point: Params, flat_tangent: jax.Array) -> jax.Array:
    return ravel_pytree(_hvp(loss_fn, point, unravel(flat_tangent)))[0]

  def matvec(vector: np.ndarray) -> np.ndarray:
    vector = jnp.asarray(np.asarray(vector).reshape(-1), dtype=dtype)
    return np.asarray(flat_product(params, vector), dtype=np.float64)

  return FlatHessian(matvec=matvec, dim=int(flat_params.size),
                     dtype=np.dtype(dtype))


def restrict_to_subset(loss_fn: LossFn, params: Mapping[str, Any],
                       subset: Optional[Sequence[str]]
                      ) -> tuple[LossFn, Params]:
  """The loss as a function of the top-level groups `subset` only.

  The other groups stay fixed at their values in `params`, so the Hessian of
  the returned loss is the diagonal block of the full Hessian for `subset`.
  `subset=None` returns `(loss_fn, params)` unchanged.
  """
  if subset is None:
    return loss_fn, params
  unknown = [name for name in subset if name not in params]
  if unknown or not subset:
    raise ValueError(
        f"Parameter subset {list(subset)} is not a non-empty list of top-level "
        f"parameter groups; unknown: {unknown}; valid: {sorted(params)}.")
  fixed = dict(params)
  selected = {name: params[name] for name in subset}

  def subset_loss(sub_params: Params) -> jax.Array:
    return loss_fn({**fixed, **sub_params})

  return subset_loss, selected


def _operator(hessian: FlatHessian) -> scipy.sparse.linalg.LinearOperator:
  return scipy.sparse.linalg.LinearOperator(
      (hessian.dim, hessian.dim), matvec=hessian.matvec, dtype=np.float64)


def _default_tol(hessian: FlatHessian) -> float:
  # ARPACK stops when the residual is below tol * |eigenvalue|. Asking for
  # more than the product's own rounding (float32: ~1e-7 relative) makes it
  # iterate until maxiter without improving anything.
  return 1e-10 if hessian.dtype == np.float64 else 1e-4


def top_eigenvalues(hessian: FlatHessian, k: int, *,
                    which: str = "LA", seed: int = 0,
                    tol: Optional[float] = None,
                    maxiter: Optional[int] = None) -> np.ndarray:
  """The k extreme eigenvalues of `hessian`, sorted descending.

  which: see `EIGSH_WHICH` ("LA", the largest algebraic, by default).
  tol: ARPACK's relative residual tolerance; None picks 1e-4 for float32
    parameters (the product's noise floor) and 1e-10 for float64.
  The ARPACK start vector is drawn from `seed`, so results are reproducible.
  """
  if which not in EIGSH_WHICH:
    raise ValueError(f"Unknown which={which!r}; valid: {sorted(EIGSH_WHICH)}.")
  if not 1 <= k < hessian.dim:
    raise ValueError(f"k={k} must be in [1, {hessian.dim - 1}] (the number of "
                     "parameters minus one, an ARPACK limit).")
  start = np.random.default_rng(seed).standard_normal(hessian.dim)
  values = scipy.sparse.linalg.eigsh(
      _operator(hessian), k=k, which=which, v0=start,
      tol=_default_tol(hessian) if tol is None else tol, maxiter=maxiter,
      return_eigenvectors=False)
  return np.sort(values)[::-1]


def lanczos_tridiagonal(matvec: Callable[[np.ndarray], np.ndarray],
                        start: np.ndarray, num_steps: int, *,
                        basis_dtype: np.dtype = np.float64
                       ) -> tuple[np.ndarray, np.ndarray]:
  """Lanczos from `start` with full reorthogonalisation.

  Returns the diagonal (m,) and off-diagonal (m - 1,) of the tridiagonal
  matrix T = V^T H V, m <= num_steps (fewer when the Krylov space is exhausted).

  Written here because SciPy has no stochastic Lanczos quadrature: ARPACK
  (`eigsh`) restarts and does not expose the tridiagonal matrix of a given
  start vector, whose eigenvectors' first components are the quadrature
  weights. Full reorthogonalisation (twice, against every previous vector)
  keeps the rounding of the products from producing ghost eigenvalues. The
  basis (num_steps x dim, in `basis_dtype`) is the dominant memory cost:
  float32 suffices for float32 products (ResNet-18, 64 steps: ~3 GB).
  """
  dim = start.size
  num_steps = min(num_steps, dim)  # a Krylov space has at most dim dimensions
  basis = np.empty((num_steps, dim), dtype=basis_dtype)
  basis[0] = start / np.linalg.norm(start)
  diagonal, off_diagonal = [], []
  for step in range(num_steps):
    w = matvec(basis[step]).astype(basis_dtype)
    diagonal.append(float(basis[step] @ w))
    previous = basis[:step + 1]
    for _ in range(2):  # "twice is enough" (Parlett)
      w -= previous.T @ (previous @ w)
    beta = float(np.linalg.norm(w))
    # The Krylov space is exhausted (an invariant subspace was found) when
    # beta is rounding noise relative to the largest entry of T so far.
    scale = max(max(map(abs, diagonal)), max(off_diagonal, default=0.0))
    if step == num_steps - 1 or beta <= 1e-10 * scale:
      break
    off_diagonal.append(beta)
    basis[step + 1] = w / beta
  return np.array(diagonal), np.array(off_diagonal)


class Quadrature(NamedTuple):
  """Gauss quadrature of the spectral measure, one row per probe.

  nodes: (num_probes, m) Ritz values; weights: (num_probes, m), each row sums
  to 1 (rows shorter than m are padded with weight 0).
  """
  nodes: np.ndarray
  weights: np.ndarray


def slq_quadrature(hessian: FlatHessian, *, num_probes: int = 4,
                   lanczos_steps: int = 64, seed: int = 0) -> Quadrature:
  """Stochastic Lanczos quadrature nodes and weights of the Hessian spectrum.

  For a Rademacher probe v (normalised), v^T f(H) v ~ sum_j w_j f(theta_j)
  with theta_j the eigenvalues of the Lanczos tridiagonal matrix T and w_j
  the squared first components of its eigenvectors; averaged over probes this
  estimates (1/n) tr f(H), i.e. the spectral density.
  """
  if num_probes < 1 or lanczos_steps < 1:
    raise ValueError(f"num_probes ({num_probes}) and lanczos_steps "
                     f"({lanczos_steps}) must both be >= 1.")
  rng = np.random.default_rng(seed)
  nodes = np.zeros((num_probes, lanczos_steps))
  weights = np.zeros((num_probes, lanczos_steps))
  for probe in range(num_probes):
    start = rng.choice([-1.0, 1.0], size=hessian.dim)
    diagonal, off_diagonal = lanczos_tridiagonal(
        hessian.matvec, start, lanczos_steps,
        basis_dtype=np.promote_types(hessian.dtype, np.float32))
    ritz_values, ritz_vectors = scipy.linalg.eigh_tridiagonal(diagonal,
                                                              off_diagonal)
    m = ritz_values.size
    nodes[probe, :m] = ritz_values
    nodes[probe, m:] = ritz_values[-1]
    weights[probe, :m] = ritz_vectors[0] ** 2
  return Quadrature(nodes=nodes, weights=weights)


def gaussian_density(quadrature: Quadrature, *, grid_size: int = 1000,
                     relative_width: float = 0.01
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Gaussian-broadened density of the quadrature on an even grid.

  The Gaussian's standard deviation is `relative_width` times the spread of
  the nodes (an absolute floor keeps a single-point spectrum finite); the
  grid extends 5 standard deviations past the extreme nodes, so the density
  integrates to 1 (to within the grid's resolution).
  """
  nodes, weights = quadrature
  low, high = float(nodes.min()), float(nodes.max())
  sigma = max(relative_width * (high - low), 1e-8 * max(1.0, abs(high)))
  grid = np.linspace(low - 5 * sigma, high + 5 * sigma, grid_size)
  kernel = np.exp(-0.5 * ((grid[:, None] - nodes.reshape(-1)) / sigma) ** 2)
  kernel /= sigma * np.sqrt(2 * np.pi)
  density = kernel @ weights.reshape(-1) / nodes.shape[0]
  return grid, density


def spectral_density(hessian: FlatHessian, *, num_probes: int = 4,
                     lanczos_steps: int = 64, seed: int = 0,
                     grid_size: int = 1000, relative_width: float = 0.01
                    ) -> tuple[np.ndarray, np.ndarray]:
  """(grid, density): the eigenvalue density of `hessian` by SLQ."""
  quadrature = slq_quadrature(hessian, num_probes=num_probes,
                              lanczos_steps=lanczos_steps, seed=seed)
  return gaussian_density(quadrature, grid_size=grid_size,
                          relative_width=relative_width)
