"""`python -m mio_jax.main`: the main command, kept at its documented name.

The command lives in `mio_jax.cli.main`.
"""
from absl import flags

from mio_jax.cli import main as _main

if __name__ == "__main__":
  flags.adopt_module_key_flags(_main)  # --help lists the command's flags
  __doc__ = _main.__doc__  # absl's --help shows the __main__ module's docstring
  _main.run()
