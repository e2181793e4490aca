"""Multi-process start-up: one JAX process per host (or per GPU), one mesh.

`initialize(settings)` must run before any JAX computation. It picks, in
order:

1. Explicit settings: a coordinator address, process count and process id
   (`DistributedSettings`, built by `settings_from_environment` from
   arguments and the `MIO_*` variables, or by `mio_jax.cli.distributed_flags`
   from the command line). Use this for several GPU hosts, or several
   processes on one machine (`launch/gpu_run.sh --processes=N`).
2. A managed cluster JAX detects by itself (a Cloud TPU VM slice, a Slurm
   step with several tasks): `jax.distributed.initialize()` with no
   addresses, so the same command runs unchanged on every worker.
3. Otherwise a single process: nothing to do (one process already sees all
   of its local GPUs or TPU chips).

GPUs: each process drives the GPUs `local_device_ids(environ)` names, a
pure function of the environment (see there for Slurm's
`--gpus-per-task=1`, which JAX's own default gets wrong).

Failure handling: JAX's coordination service gives up on start-up after
`initialization_timeout` seconds (coordinator unreachable, a worker that
never starts), and declares a process dead when it has not sent a heartbeat
for `heartbeat_timeout` seconds; the surviving processes then abort with an
error instead of waiting forever in a collective. Both are bounded by the
settings so a lost worker costs minutes, not hours.

Importing this module defines no flags and reads no environment; every
setting arrives as a value.

Paths: the workdir and the TFDS data_dir may be `gs://` buckets, so code that
touches them goes through `etils.epath` (see `mio_jax.files`) rather than
`os.path`.
"""
import dataclasses
import os
import re
import socket
import time
from typing import Mapping, Optional

from absl import logging

from mio_jax import errors


@dataclasses.dataclass(frozen=True)
class DistributedSettings:
  """How this process joins a multi-process run (None: not given).

  The timeouts are in seconds: for every process to join the coordinator,
  without a heartbeat before a process counts as dead, and for a finishing
  process to wait for the others at exit.
  """
  coordinator_address: Optional[str] = None
  num_processes: Optional[int] = None
  process_id: Optional[int] = None
  initialization_timeout: int = 300
  heartbeat_timeout: int = 60
  shutdown_timeout: int = 60


# The environment variables read (first set one wins) for each setting that
# no argument gives.
ENVIRONMENT_VARIABLES = {
    "coordinator_address": ("MIO_COORDINATOR_ADDRESS",
                            "JAX_COORDINATOR_ADDRESS"),
    "num_processes": ("MIO_NUM_PROCESSES",),
    "process_id": ("MIO_PROCESS_ID",),
    "initialization_timeout": ("MIO_DISTRIBUTED_INIT_TIMEOUT",),
    "heartbeat_timeout": ("MIO_DISTRIBUTED_HEARTBEAT_TIMEOUT",),
    "shutdown_timeout": ("MIO_DISTRIBUTED_SHUTDOWN_TIMEOUT",),
}


def _parse_int(name: str, value: str) -> int:
  try:
    return int(value)
  except ValueError:
    raise errors.InvalidValueError(
        name, value, "is not an integer",
        f"set {name} to a whole number or unset it") from None


def _env_value(field: str, environ: Mapping[str, str]):
  """The first set variable of `field`, typed, else None."""
  name = next((n for n in ENVIRONMENT_VARIABLES[field] if environ.get(n)),
              None)
  if name is None:
    return None
  if field == "coordinator_address":
    return environ[name]
  return _parse_int(name, environ[name])


def settings_from_environment(
    environ: Optional[Mapping[str, str]] = None, **overrides
) -> DistributedSettings:
  """Merges arguments > environment > defaults.

  Args:
    environ: the environment to read (default `os.environ`).
    **overrides: DistributedSettings fields given explicitly (None: unset).

  Returns:
    The merged settings.

  Raises:
    TypeError: an unknown field (a bug of the caller).
    errors.InvalidValueError: an environment value that is not an integer
      where one is needed.
  """
  environ = os.environ if environ is None else environ
  unknown = set(overrides) - set(ENVIRONMENT_VARIABLES)
  if unknown:
    raise TypeError(f"Unknown distributed settings {sorted(unknown)}; "
                    f"valid: {sorted(ENVIRONMENT_VARIABLES)}.")
  values = {}
  for field in ENVIRONMENT_VARIABLES:
    value = overrides.get(field)
    if value is None:
      value = _env_value(field, environ)
    if value is not None:
      values[field] = value
  return DistributedSettings(**values)


class CoordinatorUnreachableError(errors.UserError, ConnectionError):
  """Process 0's coordinator did not accept connections in time."""


def _host_and_port(address: str) -> tuple[str, int]:
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit():
    raise errors.InvalidValueError(
        "coordinator_address", address, "is not host:port",
        "give process 0's address, e.g. 10.0.0.1:1234")
  return host.strip("[]"), int(port)  # IPv6 literals are written [::1]:port.


def _wait_for_coordinator(address: str, timeout: float) -> float:
  """Polls `address` until it accepts TCP connections; returns seconds waited.

  JAX's own failure here is a fatal abort saying DEADLINE_EXCEEDED on an
  RPC; probing first turns the common mistakes (process 0 not started, wrong
  host or port, a firewall) into an error that names the address.
  """
  host, port = _host_and_port(address)
  start = time.monotonic()
  while True:
    try:
      with socket.create_connection((host, port), timeout=2):
        return time.monotonic() - start
    except OSError as e:
      waited = time.monotonic() - start
      if waited >= timeout:
        raise CoordinatorUnreachableError(
            f"No JAX coordinator at {address} after {waited:.0f} s ({e}); "
            "start process 0 first (or together), check the address, port "
            "and firewall, or raise --distributed_init_timeout."
        ) from e
      time.sleep(min(1.0, timeout - waited))


# ---- which GPUs this process drives ---------------------------------------

_SLURM_STEP_VARIABLES = ("SLURM_STEP_NODELIST", "SLURM_PROCID",
                         "SLURM_LOCALID")


def _slurm_tasks_on_this_node(environ: Mapping[str, str]) -> Optional[int]:
  """Tasks of this Slurm step on this node, or None if Slurm does not say.

  Slurm writes the counts per node compressed: "8(x2)" is 8 on each of two
  nodes, "4,2" is 4 on the first node and 2 on the second.
  """
  compressed = (environ.get("SLURM_STEP_TASKS_PER_NODE")
                or environ.get("SLURM_TASKS_PER_NODE"))
  if not compressed:
    return None
  counts = []
  for part in compressed.split(","):
    match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
    if match is None:
      return None
    counts += [int(match[1])] * int(match[2] or 1)
  if len(set(counts)) == 1:
    return counts[0]
  node = environ.get("SLURM_NODEID", "")
  if node.isdigit() and int(node) < len(counts):
    return counts[int(node)]
  return None


def local_device_ids(environ: Mapping[str, str]) -> Optional[list[int]]:
  """The GPUs (indices into the visible ones) this process drives, or None.

  None leaves the choice to JAX: every visible GPU, except under Slurm,
  where JAX takes GPU number SLURM_LOCALID (jax 0.10.2,
  `clusters.ClusterEnv.auto_detect_unset_distributed_params`). That default
  is right when every task of a node sees all of the node's GPUs, and wrong
  when Slurm gives each task its own GPUs (`--gpus-per-task=1` sets
  CUDA_VISIBLE_DEVICES to that one GPU, whose index is then 0, while the 4th
  task asks for index 3) or one task several (`--ntasks-per-node=1` with
  several GPUs: JAX would use the first only). Indices count within
  CUDA_VISIBLE_DEVICES, as JAX's `jax_cuda_visible_devices` does.

  Rules, in order:
  1. JAX_LOCAL_DEVICE_IDS (JAX's own variable, comma-separated) wins; the
     one-node launcher `launch/gpu_run.sh --processes=N` sets it.
  2. Outside a Slurm step, or with CUDA_VISIBLE_DEVICES unset: None.
  3. The task's own GPUs, all of them: one visible GPU, or as many as
     SLURM_GPUS_PER_TASK (`--gpus-per-task=2` binds 2 GPUs to each task).
  4. The node's visible GPUs split evenly over its tasks: task
     SLURM_LOCALID takes its consecutive share.

  Args:
    environ: the process environment.

  Returns:
    A list of GPU indices, or None for JAX's default.

  Raises:
    errors.InvalidValueError: JAX_LOCAL_DEVICE_IDS is not a list of
      integers, or a Slurm node's tasks cannot share its GPUs evenly.
  """
  explicit = environ.get("JAX_LOCAL_DEVICE_IDS")
  if explicit:
    return [_parse_int("JAX_LOCAL_DEVICE_IDS", x) for x in explicit.split(",")]
  visible = environ.get("CUDA_VISIBLE_DEVICES")
  if (visible is None
      or not all(environ.get(name) for name in _SLURM_STEP_VARIABLES)):
    return None
  num_visible = len([d for d in visible.split(",") if d.strip()])
  tasks = _slurm_tasks_on_this_node(environ)
  if num_visible == 0 or tasks is None:
    return None
  # Slurm writes SLURM_GPUS_PER_TASK as "2" or with a GPU type, "a100:2".
  per_task = environ.get("SLURM_GPUS_PER_TASK", "").rpartition(":")[2]
  if num_visible == 1 or per_task == str(num_visible):
    return list(range(num_visible))
  if num_visible % tasks:
    raise errors.InvalidValueError(
        "CUDA_VISIBLE_DEVICES", visible,
        f"cannot be shared evenly by the {tasks} Slurm tasks of this node",
        "give each task one GPU: --ntasks-per-node=<GPUs per node> "
        "--gpus-per-task=1")
  share = num_visible // tasks
  first = _parse_int("SLURM_LOCALID", environ["SLURM_LOCALID"]) * share
  return list(range(first, first + share))


# ---- joining the run --------------------------------------------------------

def _managed_cluster(environ: Mapping[str, str]) -> Optional[str]:
  """The managed cluster JAX can auto-configure from, or None.

  JAX sets `running_in_cloud_tpu_vm` at import when libtpu sees TPU chips;
  it is the same test JAX's own TPU cluster detection starts with, and it
  does not contact the metadata server.
  """
  from jax._src import cloud_tpu_init  # pylint: disable=g-import-not-at-top
  if cloud_tpu_init.running_in_cloud_tpu_vm:
    return "Cloud TPU VM"
  ntasks = _parse_int("SLURM_NTASKS", environ.get("SLURM_NTASKS", "1"))
  if ntasks > 1 and "SLURM_JOB_ID" in environ:
    return "Slurm"
  return None


def _check_settings(s: DistributedSettings) -> None:
  """Raises InvalidValueError for incomplete or inconsistent settings."""
  for field in ("initialization_timeout", "heartbeat_timeout",
                "shutdown_timeout"):
    errors.check_positive(field, getattr(s, field))
  if s.num_processes is None:
    if s.coordinator_address is not None or s.process_id is not None:
      raise errors.InvalidValueError(
          "num_processes", None,
          "must be given with a coordinator address or process id",
          "set --num_processes (or MIO_NUM_PROCESSES) as well")
    return
  errors.check_positive("num_processes", s.num_processes)
  if s.num_processes == 1:
    return
  missing = [name for name, value in
             (("--coordinator_address", s.coordinator_address),
              ("--process_id", s.process_id)) if value is None]
  if missing:
    raise errors.InvalidValueError(
        "num_processes", s.num_processes,
        f"also needs {' and '.join(missing)}",
        "or MIO_COORDINATOR_ADDRESS / MIO_PROCESS_ID")
  if not 0 <= s.process_id < s.num_processes:
    raise errors.InvalidValueError(
        "process_id", s.process_id,
        f"must be in [0, num_processes={s.num_processes})",
        "number the processes 0, 1, ... on each host")
  _host_and_port(s.coordinator_address)


def initialize(settings: DistributedSettings,
               environ: Optional[Mapping[str, str]] = None) -> bool:
  """Joins the multi-process run if there is one; call before any JAX work.

  Args:
    settings: how to join (`settings_from_environment`, or the command
      line's `mio_jax.cli.distributed_flags.settings_from_flags`).
    environ: the environment, for cluster detection and the GPU choice
      (default `os.environ`).

  Returns:
    True if `jax.distributed` is initialised (now or before), False for a
    single-process run.

  Raises:
    errors.InvalidValueError: settings that are incomplete or inconsistent,
      a Slurm job whose tasks were not started by srun, or GPUs that the
      tasks of a node cannot share (see `local_device_ids`).
    CoordinatorUnreachableError: process 0's coordinator did not answer
      within initialization_timeout.

  If some process never joins, JAX itself aborts the waiting processes (a
  fatal log naming DEADLINE_EXCEEDED and RegisterTask, status 134; measured
  on jax 0.10.2: 10 s for initialization_timeout=5): an abort of the
  process, not an exception.
  """
  # Imported here: the command line reads DistributedSettings' defaults for
  # its flags, and `--help` must not wait for JAX.
  import jax  # pylint: disable=g-import-not-at-top
  if jax.distributed.is_initialized():
    return True
  environ = os.environ if environ is None else environ
  s = settings
  _check_settings(s)
  timeouts = dict(initialization_timeout=s.initialization_timeout,
                  heartbeat_timeout_seconds=s.heartbeat_timeout,
                  shutdown_timeout_seconds=s.shutdown_timeout)

  if s.num_processes is not None and s.num_processes > 1:
    device_ids = local_device_ids(environ)
    logging.info(
        "Joining %d processes as process %d via coordinator %s (local "
        "device ids: %s). If one never joins, JAX aborts after about %d s "
        "with DEADLINE_EXCEEDED (RegisterTask): check that every process "
        "was started.", s.num_processes, s.process_id, s.coordinator_address,
        "JAX's default" if device_ids is None else device_ids,
        2 * s.initialization_timeout)
    if s.process_id != 0:  # Process 0 starts the coordinator itself.
      waited = _wait_for_coordinator(s.coordinator_address,
                                     s.initialization_timeout)
      timeouts["initialization_timeout"] = max(
          1, int(s.initialization_timeout - waited))
    jax.distributed.initialize(s.coordinator_address, s.num_processes,
                               s.process_id, local_device_ids=device_ids,
                               **timeouts)
    return True

  if s.num_processes is None:
    cluster = _managed_cluster(environ)
    if cluster == "Slurm":
      missing = [n for n in _SLURM_STEP_VARIABLES if n not in environ]
      if missing:
        raise errors.InvalidValueError(
            "SLURM_NTASKS", environ["SLURM_NTASKS"],
            f"but {', '.join(missing)} unset: the tasks were not started by "
            "srun", "start the command with srun inside the sbatch script")
    if cluster is not None:
      # TPUs never take local device ids (JAX ignores them there too).
      device_ids = None if cluster == "Cloud TPU VM" else local_device_ids(
          environ)
      logging.info("%s detected: jax.distributed auto-configuration "
                   "(local device ids: %s).", cluster,
                   "JAX's default" if device_ids is None else device_ids)
      jax.distributed.initialize(local_device_ids=device_ids, **timeouts)
      return True
  return False


def is_main_process() -> bool:
  """True on process 0, the one that writes logs, plots and summaries."""
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index() == 0
