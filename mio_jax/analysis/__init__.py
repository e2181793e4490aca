"""Analyses of trained checkpoints.

`spectrum`: Hessian eigenvalues (ARPACK) and spectral densities (stochastic
Lanczos quadrature) of any loss from Hessian-vector products.
`hessian`: the same for the pretraining loss at a checkpoint, for each loss
(`python -m mio_jax.analysis.hessian --workdir=...`).
`compare`: the losses pretrained under one budget and seeds, probed and
their λ_max taken (`python -m mio_jax.analysis.compare --out=...`).
"""
