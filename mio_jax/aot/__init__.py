"""Ahead-of-time compilation for a TPU slice this machine does not have.

`topology`: Cloud TPU accelerator types (v4-8, v5litepod-16, ...) as
libtpu's compile-only devices. `programs`: the steps a config runs
(pretraining, feature extraction, the supervised protocols), lowered with
abstract, sharded inputs. `check`: compiles them, reads XLA's memory and
cost figures, and turns them into HBM per chip, a roofline bound and the
largest batch that fits. The command is `python -m mio_jax.cli.tpu_compile`.
"""
