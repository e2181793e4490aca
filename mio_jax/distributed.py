"""Multi-process start-up: one JAX process per host, all hosts in one mesh.

`initialize()` must run before any JAX computation. It picks, in order:

1. Explicit settings: a coordinator address, process count and process id
   from the arguments, else the absl flags below, else the environment
   (`MIO_COORDINATOR_ADDRESS`, `MIO_NUM_PROCESSES`, `MIO_PROCESS_ID`; JAX's
   own `JAX_COORDINATOR_ADDRESS` is honoured for the address). Use this for
   several GPU hosts, or several processes on one machine.
2. A managed cluster JAX detects by itself (a Cloud TPU VM slice, Slurm):
   `jax.distributed.initialize()` with no addresses, so the same command
   runs unchanged on every worker of a v4-32.
3. Otherwise a single process: nothing to do (one process already sees all
   of its local GPUs or TPU chips).

Failure handling: JAX's coordination service gives up on start-up after
`initialization_timeout` seconds (coordinator unreachable, a worker that
never starts), and declares a process dead when it has not sent a heartbeat
for `heartbeat_timeout` seconds; the surviving processes then abort with an
error instead of waiting forever in a collective. Both are bounded here by
flags so a lost worker costs minutes, not hours.

Paths: the workdir and the TFDS data_dir may be `gs://` buckets, so code that
touches them goes through `etils.epath` (see `ensure_workdir`) rather than
`os.path`.
"""
import dataclasses
import os
import socket
import time
from typing import Mapping, Optional

from absl import flags
from absl import logging
from etils import epath
import jax

_COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address", None,
    "host:port of process 0's coordinator, for multi-process runs outside a "
    "managed cluster (env MIO_COORDINATOR_ADDRESS or JAX_COORDINATOR_ADDRESS)."
    " Not needed on Cloud TPU VMs, where JAX finds it.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None,
    "Number of processes (one per host) in the run (env MIO_NUM_PROCESSES).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None,
    "This process's index in [0, num_processes) (env MIO_PROCESS_ID).")
_INIT_TIMEOUT = flags.DEFINE_integer(
    "distributed_init_timeout", 300,
    "Seconds to wait for every process to join the coordinator before "
    "failing (env MIO_DISTRIBUTED_INIT_TIMEOUT).")
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    "distributed_heartbeat_timeout", 60,
    "Seconds without a heartbeat after which a process counts as dead and "
    "the others abort (env MIO_DISTRIBUTED_HEARTBEAT_TIMEOUT).")
_SHUTDOWN_TIMEOUT = flags.DEFINE_integer(
    "distributed_shutdown_timeout", 60,
    "Seconds a finishing process waits for the others at exit "
    "(env MIO_DISTRIBUTED_SHUTDOWN_TIMEOUT).")


@dataclasses.dataclass(frozen=True)
class DistributedSettings:
  """How this process joins a multi-process run (None: not given)."""
  coordinator_address: Optional[str] = None
  num_processes: Optional[int] = None
  process_id: Optional[int] = None
  initialization_timeout: int = _INIT_TIMEOUT.default
  heartbeat_timeout: int = _HEARTBEAT_TIMEOUT.default
  shutdown_timeout: int = _SHUTDOWN_TIMEOUT.default


# Each setting's flag, and the environment variables read (in order) when
# neither an argument nor the flag gives it.
_SOURCES = {
    "coordinator_address": (_COORDINATOR_ADDRESS, ("MIO_COORDINATOR_ADDRESS",
                                                   "JAX_COORDINATOR_ADDRESS")),
    "num_processes": (_NUM_PROCESSES, ("MIO_NUM_PROCESSES",)),
    "process_id": (_PROCESS_ID, ("MIO_PROCESS_ID",)),
    "initialization_timeout": (_INIT_TIMEOUT, ("MIO_DISTRIBUTED_INIT_TIMEOUT",)),
    "heartbeat_timeout": (_HEARTBEAT_TIMEOUT,
                          ("MIO_DISTRIBUTED_HEARTBEAT_TIMEOUT",)),
    "shutdown_timeout": (_SHUTDOWN_TIMEOUT, ("MIO_DISTRIBUTED_SHUTDOWN_TIMEOUT",)),
}


def _flag_value(holder: flags.FlagHolder):
  """The flag's value if given on a parsed command line, else None."""
  if not flags.FLAGS.is_parsed() or not holder.present:
    return None
  return holder.value


def _env_value(name: str, env_names, environ: Mapping[str, str]):
  """The first set environment variable of `env_names`, typed, else None."""
  env_name = next((e for e in env_names if environ.get(e)), None)
  if env_name is None:
    return None
  value = environ[env_name]
  if name == "coordinator_address":
    return value
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"{env_name}={value!r} is not an integer.") from None


def resolve_settings(
    environ: Optional[Mapping[str, str]] = None, **overrides
) -> DistributedSettings:
  """Merges arguments > absl flags > environment > defaults.

  Args:
    environ: the environment to read (default `os.environ`).
    **overrides: DistributedSettings fields given explicitly (None: unset).

  Returns:
    The merged settings.

  Raises:
    ValueError: an unknown field, or an environment value that is not an
      integer where one is needed.
  """
  environ = os.environ if environ is None else environ
  unknown = set(overrides) - set(_SOURCES)
  if unknown:
    raise ValueError(f"Unknown distributed settings {sorted(unknown)}; "
                     f"valid: {sorted(_SOURCES)}.")
  values = {}
  for name, (flag, env_names) in _SOURCES.items():
    value = overrides.get(name)
    if value is None:
      value = _flag_value(flag)
    if value is None:
      value = _env_value(name, env_names, environ)
    if value is not None:
      values[name] = value
  return DistributedSettings(**values)


class CoordinatorUnreachableError(RuntimeError):
  """Process 0's coordinator did not accept connections in time."""


def _wait_for_coordinator(address: str, timeout: float) -> float:
  """Polls `address` until it accepts TCP connections; returns seconds waited.

  JAX's own failure here is a fatal abort saying DEADLINE_EXCEEDED on an
  RPC; probing first turns the common mistakes (process 0 not started, wrong
  host or port, a firewall) into an error that names the address.
  """
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit():
    raise ValueError(f"coordinator_address={address!r} must be host:port.")
  host = host.strip("[]")  # IPv6 literals are written [::1]:port.
  start = time.monotonic()
  while True:
    try:
      with socket.create_connection((host, int(port)), timeout=2):
        return time.monotonic() - start
    except OSError as e:
      waited = time.monotonic() - start
      if waited >= timeout:
        raise CoordinatorUnreachableError(
            f"No JAX coordinator at {address} after {waited:.0f} s ({e}). "
            "Start process 0 first (or together), and check the address, "
            "port and firewall; --distributed_init_timeout sets the wait."
        ) from e
      time.sleep(min(1.0, timeout - waited))


def _managed_cluster(environ: Mapping[str, str]) -> Optional[str]:
  """The managed cluster JAX can auto-configure from, or None.

  JAX sets `running_in_cloud_tpu_vm` at import when libtpu sees TPU chips;
  it is the same test JAX's own TPU cluster detection starts with, and it
  does not contact the metadata server.
  """
  from jax._src import cloud_tpu_init  # pylint: disable=g-import-not-at-top
  if cloud_tpu_init.running_in_cloud_tpu_vm:
    return "Cloud TPU VM"
  if int(environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in environ:
    return "Slurm"
  return None


def initialize(environ: Optional[Mapping[str, str]] = None,
               **overrides) -> bool:
  """Joins the multi-process run if there is one; call before any JAX work.

  Args:
    environ: the environment to read (default `os.environ`).
    **overrides: DistributedSettings fields (coordinator_address,
      num_processes, process_id, initialization_timeout, heartbeat_timeout,
      shutdown_timeout), taking precedence over flags and environment.

  Returns:
    True if `jax.distributed` is initialised (now or before), False for a
    single-process run.

  Raises:
    ValueError: settings that are incomplete or inconsistent, naming the fix.
    CoordinatorUnreachableError: process 0's coordinator did not answer
      within initialization_timeout.

  If some process never joins, JAX itself aborts the waiting processes (a
  fatal log naming DEADLINE_EXCEEDED and RegisterTask, status 134; measured
  on jax 0.10.2: 10 s for initialization_timeout=5): an abort of the
  process, not an exception.
  """
  if jax.distributed.is_initialized():
    return True
  environ = os.environ if environ is None else environ
  s = resolve_settings(environ, **overrides)
  timeouts = dict(initialization_timeout=s.initialization_timeout,
                  heartbeat_timeout_seconds=s.heartbeat_timeout,
                  shutdown_timeout_seconds=s.shutdown_timeout)
  explicit = (s.coordinator_address, s.num_processes, s.process_id)

  if s.num_processes is not None and s.num_processes > 1:
    missing = [name for name, value in
               (("--coordinator_address", s.coordinator_address),
                ("--process_id", s.process_id)) if value is None]
    if missing:
      raise ValueError(
          f"num_processes={s.num_processes} also needs {' and '.join(missing)}"
          " (or MIO_COORDINATOR_ADDRESS / MIO_PROCESS_ID).")
    if not 0 <= s.process_id < s.num_processes:
      raise ValueError(f"process_id={s.process_id} must be in "
                       f"[0, num_processes={s.num_processes}).")
    logging.info(
        "Joining %d processes as process %d via coordinator %s. If one never "
        "joins, JAX aborts after about %d s with DEADLINE_EXCEEDED "
        "(RegisterTask): check that every process was started.",
        s.num_processes, s.process_id, s.coordinator_address,
        2 * s.initialization_timeout)
    if s.process_id != 0:  # Process 0 starts the coordinator itself.
      waited = _wait_for_coordinator(s.coordinator_address,
                                     s.initialization_timeout)
      timeouts["initialization_timeout"] = max(
          1, int(s.initialization_timeout - waited))
    jax.distributed.initialize(s.coordinator_address, s.num_processes,
                               s.process_id, **timeouts)
    return True

  if s.num_processes is None and any(v is not None for v in explicit):
    raise ValueError(
        "A coordinator address or process id was given without the process "
        "count: set --num_processes (or MIO_NUM_PROCESSES) as well.")

  if s.num_processes is None:
    cluster = _managed_cluster(environ)
    if cluster is not None:
      logging.info("%s detected: jax.distributed auto-configuration.", cluster)
      jax.distributed.initialize(**timeouts)
      return True
  return False


def is_main_process() -> bool:
  """True on process 0, the one that writes logs, plots and summaries."""
  return jax.process_index() == 0


def ensure_workdir(path: "str | os.PathLike[str]") -> epath.Path:
  """Creates the workdir (local or `gs://...`) and returns it as an epath.

  Every process may call it: creating an existing directory is a no-op, and
  on object stores a "directory" is only a name prefix.
  """
  workdir = epath.Path(path)
  workdir.mkdir(parents=True, exist_ok=True)
  return workdir
