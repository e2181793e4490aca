"""The command-line programs of mio_jax, each a thin file from flags to a function.

    python -m mio_jax.main        pretrain and evaluate (= mio_jax.cli.main)
    python -m mio_jax.cli.demo    the offline CPU demo (`make demo`)
    python -m mio_jax.cli.prepare prepare a data set's TFDS files
    python -m mio_jax.cli.hessian Hessian spectra of each loss at a checkpoint
    python -m mio_jax.cli.compare the losses compared: settings chosen on a validation split, then paired over seeds
    python -m mio_jax.cli.selfcheck  the loss checks on this machine's devices

Only this package defines absl flags; the library takes values.
"""
