"""The command line's distributed flags: flags > environment > defaults.

    distributed_flags.define_flags()          # at import of a command
    ...
    distributed.initialize(distributed_flags.settings_from_flags())

The flag names and defaults are the ones users have; each flag's
environment variable is in `mio_jax.distributed.ENVIRONMENT_VARIABLES`.
"""
from typing import Mapping, Optional

from absl import flags

from mio_jax import distributed

_DEFAULTS = distributed.DistributedSettings()

# Flag name -> (DistributedSettings field, flag type, help).
_FLAGS = {
    "coordinator_address": (
        "coordinator_address", flags.DEFINE_string,
        "host:port of process 0's coordinator, for multi-process runs outside "
        "a managed cluster (env MIO_COORDINATOR_ADDRESS or "
        "JAX_COORDINATOR_ADDRESS). Not needed on Cloud TPU VMs or under "
        "Slurm, where JAX finds it."),
    "num_processes": (
        "num_processes", flags.DEFINE_integer,
        "Number of processes (one per host, or per GPU) in the run "
        "(env MIO_NUM_PROCESSES)."),
    "process_id": (
        "process_id", flags.DEFINE_integer,
        "This process's index in [0, num_processes) (env MIO_PROCESS_ID)."),
    "distributed_init_timeout": (
        "initialization_timeout", flags.DEFINE_integer,
        "Seconds to wait for every process to join the coordinator before "
        "failing (env MIO_DISTRIBUTED_INIT_TIMEOUT)."),
    "distributed_heartbeat_timeout": (
        "heartbeat_timeout", flags.DEFINE_integer,
        "Seconds without a heartbeat after which a process counts as dead "
        "and the others abort (env MIO_DISTRIBUTED_HEARTBEAT_TIMEOUT)."),
    "distributed_shutdown_timeout": (
        "shutdown_timeout", flags.DEFINE_integer,
        "Seconds a finishing process waits for the others at exit "
        "(env MIO_DISTRIBUTED_SHUTDOWN_TIMEOUT)."),
}


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the distributed flags in `flag_values` (once per FlagValues)."""
  for name, (field, define, help_text) in _FLAGS.items():
    define(name, getattr(_DEFAULTS, field), help_text,
           flag_values=flag_values)


def settings_from_flags(
    environ: Optional[Mapping[str, str]] = None,
    flag_values: flags.FlagValues = flags.FLAGS,
) -> distributed.DistributedSettings:
  """Flags given on the parsed command line > environment > defaults.

  A flag left at its default does not hide its environment variable.

  Raises:
    errors.InvalidValueError: an environment value that is not an integer
      where one is needed.
  """
  given = {field: flag_values[name].value
           for name, (field, _, _) in _FLAGS.items()
           if flag_values[name].present}
  return distributed.settings_from_environment(environ, **given)
