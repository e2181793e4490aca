"""Tests of mio_jax.distributed: settings, failure modes, and 2-process training.

The multi-process tests start real processes of tests/multiprocess_runner.py
on the CPU backend (gloo collectives, a localhost coordinator), each with
its own 2 fake devices, and read their results from JSON files.
"""
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import child_env

from mio_jax import distributed
from mio_jax import errors

_RUNNER = pathlib.Path(__file__).parents[1] / "multiprocess_runner.py"


# ---- settings and validation (no processes started) -----------------------

def _settings(**fields) -> distributed.DistributedSettings:
  return distributed.DistributedSettings(**fields)


def test_arguments_override_environment():
  env = {"MIO_COORDINATOR_ADDRESS": "10.0.0.1:1234", "MIO_NUM_PROCESSES": "4",
         "MIO_PROCESS_ID": "3", "MIO_DISTRIBUTED_HEARTBEAT_TIMEOUT": "7"}
  s = distributed.settings_from_environment(env, process_id=1)
  assert s == distributed.DistributedSettings(
      coordinator_address="10.0.0.1:1234", num_processes=4, process_id=1,
      heartbeat_timeout=7)


def test_jax_coordinator_address_is_honoured():
  s = distributed.settings_from_environment({"JAX_COORDINATOR_ADDRESS": "h:1"})
  assert s.coordinator_address == "h:1"


def test_bad_environment_value_names_the_variable():
  with pytest.raises(errors.UserError, match="MIO_NUM_PROCESSES='two'"):
    distributed.settings_from_environment({"MIO_NUM_PROCESSES": "two"})


def test_unknown_setting_is_rejected():
  with pytest.raises(TypeError, match="num_process.*valid"):
    distributed.settings_from_environment({}, num_process=2)


def test_single_process_initializes_nothing():
  assert distributed.initialize(_settings(), environ={}) is False
  assert distributed.initialize(
      distributed.settings_from_environment({"MIO_NUM_PROCESSES": "1"}),
      environ={}) is False
  assert distributed.is_main_process()


@pytest.mark.parametrize("settings, message", [
    (dict(num_processes=2, process_id=0), "--coordinator_address"),
    (dict(num_processes=2, coordinator_address="h:1"), "--process_id"),
    (dict(num_processes=2, process_id=2, coordinator_address="h:1"),
     r"process_id=2 must be in \[0, num_processes=2\)"),
    (dict(coordinator_address="h:1"), "--num_processes"),
])
def test_incomplete_settings_fail_before_contacting_anyone(settings, message):
  with pytest.raises(errors.UserError, match=message):
    distributed.initialize(_settings(**settings), environ={})


def test_slurm_job_is_a_managed_cluster():
  slurm = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2"}
  assert distributed._managed_cluster(slurm) == "Slurm"
  assert distributed._managed_cluster({**slurm, "SLURM_NTASKS": "1"}) is None
  assert distributed._managed_cluster({}) is None


@pytest.fixture
def recorded_initialize(monkeypatch):
  """Replaces jax.distributed.initialize by a recorder of its arguments."""
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize",
                      lambda *args, **kwargs: calls.append((args, kwargs)))
  return calls


def test_cloud_tpu_vm_initializes_with_auto_detection(monkeypatch,
                                                      recorded_initialize):
  from jax._src import cloud_tpu_init  # pylint: disable=g-import-not-at-top
  # raising=True (the default) also catches JAX renaming the attribute.
  monkeypatch.setattr(cloud_tpu_init, "running_in_cloud_tpu_vm", True)
  assert distributed.initialize(_settings(heartbeat_timeout=9),
                                environ={}) is True
  assert recorded_initialize == [((), dict(
      local_device_ids=None, initialization_timeout=300,
      heartbeat_timeout_seconds=9, shutdown_timeout_seconds=60))]


def test_explicit_settings_reach_jax(recorded_initialize):
  env = {"MIO_COORDINATOR_ADDRESS": "10.0.0.1:1234", "MIO_NUM_PROCESSES": "4",
         "MIO_PROCESS_ID": "0", "MIO_DISTRIBUTED_INIT_TIMEOUT": "30"}
  assert distributed.initialize(distributed.settings_from_environment(env),
                                environ=env) is True
  assert recorded_initialize == [(("10.0.0.1:1234", 4, 0), dict(
      local_device_ids=None, initialization_timeout=30,
      heartbeat_timeout_seconds=60, shutdown_timeout_seconds=60))]


@pytest.mark.parametrize("settings, message", [
    (dict(num_processes=2, process_id=1, coordinator_address="10.0.0.1"),
     "coordinator_address='10.0.0.1' is not host:port"),
    (dict(num_processes=0), "num_processes=0 must be > 0"),
    (dict(heartbeat_timeout=0), "heartbeat_timeout=0 must be > 0"),
])
def test_impossible_settings_are_user_errors_naming_the_value(settings,
                                                              message):
  with pytest.raises(errors.InvalidValueError, match=message):
    distributed.initialize(_settings(**settings), environ={})


def test_explicit_process_takes_the_gpu_jax_local_device_ids_names(
    recorded_initialize):
  """What `launch/gpu_run.sh --processes=N` relies on: process i, GPU i."""
  distributed.initialize(
      _settings(coordinator_address="localhost:1", num_processes=8,
                process_id=0),
      environ={"JAX_LOCAL_DEVICE_IDS": "3", "CUDA_VISIBLE_DEVICES": "0,1,2,3"})
  assert recorded_initialize[0][1]["local_device_ids"] == [3]


# Environment of task 3 of 8 on a node of a 2-node Slurm step.
_SLURM_TASK = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16",
               "SLURM_STEP_NODELIST": "gpu[01-02]", "SLURM_PROCID": "11",
               "SLURM_LOCALID": "3", "SLURM_NODEID": "1",
               "SLURM_STEP_TASKS_PER_NODE": "8(x2)"}


@pytest.mark.parametrize("environ, expected", [
    # Not Slurm: every visible GPU (JAX's default), unless JAX is told.
    ({}, None),
    ({"CUDA_VISIBLE_DEVICES": "0,1,2,3"}, None),
    ({"JAX_LOCAL_DEVICE_IDS": "1,2"}, [1, 2]),
    # --ntasks-per-node=8 --gpus-per-task=1: Slurm shows each task its GPU
    # only, as index 0, whatever its number on the node (JAX would ask for 3).
    ({**_SLURM_TASK, "CUDA_VISIBLE_DEVICES": "3"}, [0]),
    ({**_SLURM_TASK, "CUDA_VISIBLE_DEVICES": "0"}, [0]),
    ({**_SLURM_TASK, "CUDA_VISIBLE_DEVICES": "GPU-5d1a0c7e"}, [0]),
    # --ntasks-per-node=4 --gpus-per-task=2: each task sees its own two.
    ({**_SLURM_TASK, "SLURM_STEP_TASKS_PER_NODE": "4(x2)",
      "SLURM_GPUS_PER_TASK": "2", "CUDA_VISIBLE_DEVICES": "6,7"}, [0, 1]),
    ({**_SLURM_TASK, "SLURM_STEP_TASKS_PER_NODE": "4(x2)",
      "SLURM_GPUS_PER_TASK": "h100:2", "CUDA_VISIBLE_DEVICES": "6,7"}, [0, 1]),
    # --ntasks-per-node=8 --gpus-per-node=8: all tasks see all GPUs.
    ({**_SLURM_TASK, "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}, [3]),
    # 4 tasks sharing 8 GPUs: two each.
    ({**_SLURM_TASK, "SLURM_STEP_TASKS_PER_NODE": "4(x2)",
      "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}, [6, 7]),
    # --ntasks-per-node=1: one process drives all 4 GPUs (JAX: the first).
    ({**_SLURM_TASK, "SLURM_LOCALID": "0", "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
      "CUDA_VISIBLE_DEVICES": "0,1,2,3"}, [0, 1, 2, 3]),
    # Uneven nodes: this is node 1, with 2 tasks.
    ({**_SLURM_TASK, "SLURM_LOCALID": "1", "SLURM_STEP_TASKS_PER_NODE": "4,2",
      "CUDA_VISIBLE_DEVICES": "0,1"}, [1]),
    # Slurm gave no GPUs, or did not say how: JAX's default.
    ({**_SLURM_TASK, "CUDA_VISIBLE_DEVICES": ""}, None),
    (_SLURM_TASK, None),
    ({**_SLURM_TASK, "SLURM_STEP_TASKS_PER_NODE": "",
      "CUDA_VISIBLE_DEVICES": "0,1"}, None),
])
def test_local_device_ids_follow_the_environment(environ, expected):
  assert distributed.local_device_ids(environ) == expected


@pytest.mark.parametrize("environ, message", [
    ({"JAX_LOCAL_DEVICE_IDS": "0,x"}, "JAX_LOCAL_DEVICE_IDS='x'"),
    ({**_SLURM_TASK, "CUDA_VISIBLE_DEVICES": "0,1,2"},
     "CUDA_VISIBLE_DEVICES='0,1,2' cannot be shared evenly by the 8 Slurm "
     "tasks of this node; .*--gpus-per-task=1"),
])
def test_local_device_ids_reject_what_jax_cannot_use(environ, message):
  with pytest.raises(errors.InvalidValueError, match=message):
    distributed.local_device_ids(environ)


def test_slurm_task_with_its_own_gpu_initializes_on_index_0(
    recorded_initialize):
  environ = {**_SLURM_TASK, "CUDA_VISIBLE_DEVICES": "3"}
  assert distributed.initialize(_settings(), environ=environ) is True
  assert recorded_initialize == [((), dict(
      local_device_ids=[0], initialization_timeout=300,
      heartbeat_timeout_seconds=60, shutdown_timeout_seconds=60))]


def test_slurm_tasks_not_started_by_srun_are_a_user_error(recorded_initialize):
  with pytest.raises(errors.InvalidValueError, match="not started by srun"):
    distributed.initialize(_settings(),
                           environ={"SLURM_JOB_ID": "7", "SLURM_NTASKS": "8"})
  assert not recorded_initialize


# ---- real processes -------------------------------------------------------

def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _child_env(num_devices: int) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith("MIO_")}
  env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
             XLA_FLAGS=child_env.xla_flags(num_devices))
  return env


def _start(out, *args, env=None, num_devices=2) -> subprocess.Popen:
  return subprocess.Popen(
      [sys.executable, str(_RUNNER), f"--out={out}", *args],
      env={**_child_env(num_devices), **(env or {})},
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _kill_leftovers(procs):
  for p in procs:
    if p.poll() is None:
      p.kill()
      p.wait()


def _finish(procs, timeout):
  """Waits for every process; returns (returncodes, outputs); kills leftovers."""
  try:
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    return [p.returncode for p in procs], outputs
  finally:
    _kill_leftovers(procs)


def test_unreachable_coordinator_fails_fast_with_clear_error(tmp_path):
  port = _free_port()  # Nobody listens there.
  start = time.monotonic()
  (code,), (output,) = _finish([_start(
      tmp_path / "r.json", f"--coordinator_address=127.0.0.1:{port}",
      "--num_processes=2", "--process_id=1", "--distributed_init_timeout=3")],
      timeout=60)
  elapsed = time.monotonic() - start
  assert code != 0
  assert f"No JAX coordinator at 127.0.0.1:{port} after 3 s" in output
  assert "CoordinatorUnreachableError" in output
  assert elapsed < 30, f"took {elapsed:.0f} s to fail"


def test_missing_peer_aborts_the_waiting_process_in_bounded_time(tmp_path):
  start = time.monotonic()
  (code,), (output,) = _finish([_start(
      tmp_path / "r.json", "--mode=collectives",
      f"--coordinator_address=127.0.0.1:{_free_port()}", "--num_processes=2",
      "--process_id=0", "--distributed_init_timeout=3")], timeout=60)
  elapsed = time.monotonic() - start
  assert code != 0
  assert "DEADLINE_EXCEEDED" in output and "RegisterTask" in output
  assert elapsed < 30, f"took {elapsed:.0f} s to fail"


def test_two_processes_train_like_one_process_with_four_devices(tmp_path):
  """2 processes x 2 devices give the losses of 1 process x 4 devices."""
  reference = _start(tmp_path / "ref.json", "--steps=4", num_devices=4)
  (ref_code,), (ref_output,) = _finish([reference], timeout=300)
  assert ref_code == 0, ref_output
  expected = json.loads((tmp_path / "ref.json").read_text())

  address = f"127.0.0.1:{_free_port()}"
  # Process 0 reads flags, process 1 the environment: both paths are used.
  procs = [
      _start(tmp_path / "p0.json", "--steps=4", f"--coordinator_address={address}",
             "--num_processes=2", "--process_id=0"),
      _start(tmp_path / "p1.json", "--steps=4",
             env={"MIO_COORDINATOR_ADDRESS": address, "MIO_NUM_PROCESSES": "2",
                  "MIO_PROCESS_ID": "1"}),
  ]
  codes, outputs = _finish(procs, timeout=300)
  assert codes == [0, 0], "\n".join(outputs)
  for i in range(2):
    result = json.loads((tmp_path / f"p{i}.json").read_text())
    assert result["process_count"] == 2 and result["device_count"] == 4
    np.testing.assert_allclose(result["losses"], expected["losses"], rtol=1e-5)
  assert expected["process_count"] == 1 and expected["device_count"] == 4
  assert len(expected["losses"]) == 4


def _start_pair(tmp_path, mode, *flags):
  """Two processes of `mode`, once both wrote their first result."""
  address = f"127.0.0.1:{_free_port()}"
  procs = [_start(tmp_path / f"p{i}.json", f"--mode={mode}",
                  f"--coordinator_address={address}", "--num_processes=2",
                  f"--process_id={i}", *flags) for i in range(2)]
  try:
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"p{i}.json").exists() for i in range(2)):
      assert all(p.poll() is None for p in procs), "a process ended early"
      assert time.monotonic() < deadline, "processes never got ready"
      time.sleep(0.2)
  except BaseException:
    _kill_leftovers(procs)
    raise
  return procs


def test_killed_process_stops_the_other_within_bounded_time(tmp_path):
  procs = _start_pair(tmp_path, "collectives",
                      "--distributed_heartbeat_timeout=5",
                      "--distributed_shutdown_timeout=5")
  try:
    procs[1].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    (code,), (output,) = _finish([procs[0]], timeout=60)
    elapsed = time.monotonic() - killed_at
  finally:
    _kill_leftovers(procs)
  assert code != 0, output
  # Gloo notices the closed connection at once; JAX's heartbeat (5 s here)
  # bounds the rest, including the exit barrier.
  assert elapsed < 30, f"survivor took {elapsed:.0f} s to stop"


def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path):
  """What launch/tpu_stop.sh and a TPU preemption rely on."""
  procs = _start_pair(tmp_path, "preemptible")
  time.sleep(1)  # A few steps in.
  procs[1].send_signal(signal.SIGTERM)
  codes, outputs = _finish(procs, timeout=60)
  assert codes == [0, 0], "\n".join(outputs)
  stops = [json.loads((tmp_path / f"p{i}.json").read_text()) for i in range(2)]
  assert stops[0] == stops[1] and stops[0]["stopped_at"] > 0


def _jsonl_losses(path) -> dict[int, float]:
  lines = pathlib.Path(path).read_text().splitlines()
  return {r["step"]: r["loss"] for r in map(json.loads, lines)}


@pytest.mark.slow
def test_two_process_pretrain_preempted_and_resumed_matches_one_process(
    tmp_path):
  """SIGTERM to one of 2 processes saves; relaunching resumes exactly.

  Losses of steps 1..8 (first run up to the preemption, second run after)
  equal those of one uninterrupted process with 4 devices.
  """
  total = "--steps=8"
  (code,), (output,) = _finish([_start(
      tmp_path / "ref.jsonl", "--mode=pretrain", total,
      f"--workdir={tmp_path / 'ref'}", num_devices=4)], timeout=600)
  assert code == 0, output
  expected = _jsonl_losses(tmp_path / "ref.jsonl")
  assert sorted(expected) == list(range(1, 9))

  def start_run(seconds_per_step):
    address = f"127.0.0.1:{_free_port()}"
    return [_start(tmp_path / f"p{i}.jsonl", "--mode=pretrain", total,
                   f"--workdir={tmp_path / 'shared'}",
                   f"--seconds_per_step={seconds_per_step}",
                   f"--coordinator_address={address}", "--num_processes=2",
                   f"--process_id={i}") for i in range(2)]

  procs = start_run(seconds_per_step=0.5)
  try:
    deadline = time.monotonic() + 300
    while not ((tmp_path / "p1.jsonl").exists()
               and len(_jsonl_losses(tmp_path / "p1.jsonl")) >= 2):
      assert all(p.poll() is None for p in procs), "a process ended early"
      assert time.monotonic() < deadline, "no progress"
      time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)
    codes, outputs = _finish(procs, timeout=300)
  finally:
    _kill_leftovers(procs)
  assert codes == [0, 0], "\n".join(outputs)
  stopped_at = max(_jsonl_losses(tmp_path / "p0.jsonl"))
  assert 2 <= stopped_at < 8, stopped_at
  assert f"Preempted: saved step {stopped_at}" in outputs[0]

  codes, outputs = _finish(start_run(seconds_per_step=0), timeout=600)
  assert codes == [0, 0], "\n".join(outputs)
  assert f"at step {stopped_at} of 8." in outputs[0]
  for i in range(2):
    losses = _jsonl_losses(tmp_path / f"p{i}.jsonl")
    assert sorted(losses) == list(range(1, 9))
    np.testing.assert_allclose([losses[s] for s in range(1, 9)],
                               [expected[s] for s in range(1, 9)], rtol=1e-5)


def _main(workdir, data_dir, *flags, num_devices=2) -> subprocess.Popen:
  """`python -m mio_jax.main`: a few pretraining steps of a tiny digits run."""
  overrides = dict(total_steps=4, batch_size=16, log_every_steps=1,
                   checkpoint_every_steps=2, **{
                       "model.name": "resnet_tiny",
                       "model.projector_hidden_dim": 32,
                       "model.projector_output_dim": 16,
                       "dataset.image_size": 16,
                       "dataset.data_dir": str(data_dir)})
  return subprocess.Popen(
      [sys.executable, "-m", "mio_jax.main", "--config=configs/digits.py",
       "--mode=pretrain", f"--workdir={workdir}",
       *[f"--config.{k}={v}" for k, v in overrides.items()], *flags],
      cwd=_RUNNER.parents[1], env=_child_env(num_devices),
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_main_on_two_processes_matches_one_process(tmp_path):
  """The real command line and digits input pipeline, 2 x 2 vs 1 x 4 devices."""
  from mio_jax import data  # pylint: disable=g-import-not-at-top
  data.prepare_digits(str(tmp_path / "tfds"))  # once, not raced by 2 processes
  (code,), (output,) = _finish(
      [_main(tmp_path / "ref", tmp_path / "tfds", num_devices=4)], timeout=600)
  assert code == 0, output
  address = f"127.0.0.1:{_free_port()}"
  codes, outputs = _finish(
      [_main(tmp_path / "mp", tmp_path / "tfds",
             f"--coordinator_address={address}", "--num_processes=2",
             f"--process_id={i}") for i in range(2)], timeout=600)
  assert codes == [0, 0], "\n".join(outputs)

  def losses(workdir):
    records = [json.loads(line) for line in
               (workdir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in records if "loss" in r]

  expected, got = losses(tmp_path / "ref"), losses(tmp_path / "mp")
  # Only process 0 logs: one line per step, not two.
  assert [s for s, _ in got] == [s for s, _ in expected] == [1, 2, 3, 4]
  np.testing.assert_allclose([l for _, l in got], [l for _, l in expected],
                             rtol=1e-5)
