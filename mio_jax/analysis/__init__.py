"""The mathematics of trained checkpoints.

`spectrum`: Hessian eigenvalues (ARPACK) and spectral densities (stochastic
Lanczos quadrature) of any loss from Hessian-vector products.
`hessian`: the same for the pretraining loss at a checkpoint, for each loss
(command: `python -m mio_jax.cli.hessian --workdir=...`).
"""
