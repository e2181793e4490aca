#!/usr/bin/env bash
# Sets up (optionally) and runs a config on one host with one or more GPUs.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
Usage: launch/gpu_run.sh [flags] [-- --config.key=value ...]

Runs `python -m mio_jax.main` on this machine. With --processes=1 (the
default) ONE process drives every local GPU. With --processes=N it starts N
processes, process i driving GPU i (JAX_LOCAL_DEVICE_IDS=i; every process
still sees all GPUs, so NCCL can use NVLink between them), joined through a
coordinator on localhost; process 0 prints to this terminal, process i>0 to
LOG_DIR/process_<i>.log. SIGTERM or Ctrl-C is passed on as SIGTERM to every
process (each saves a checkpoint); if one process fails, the others are
stopped the same way. Several hosts: see launch/slurm_gpu.sbatch.

With --setup=yes it first creates the virtual environment with jax[cuda12]
at the jax version pinned in requirements.txt (needs an NVIDIA driver; CUDA
itself comes from pip) using Python 3.11, the version requirements.txt is
pinned for; it stops if --python is another version.

  --config         config file, e.g. configs/cifar10.py           (required)
  --workdir        local or gs:// directory for checkpoints, metrics (required)
  --tfds-data-dir  TFDS data directory (default: $TFDS_DATA_DIR or
                   ~/tensorflow_datasets)
  --processes      1, or the number of GPUs for one process each (default 1)
  --coordinator-port  localhost port of process 0's coordinator (default 12321)
  --log-dir        logs of processes 1.. (default runs/logs in this checkout)
  --setup          yes | no: create/update the venv first       (default no)
  --venv           virtual environment directory            (default .venv-gpu)
  --python         Python 3.11 used to create the venv      (default python3)
  --jax-version    default: the jax pin of requirements.txt
  --dry-run        print the commands, run nothing (the Python version check
                   still runs)
  --help           this text
Arguments after `--` go to mio_jax.main (e.g. --config.batch_size=1024).

Examples:
  launch/gpu_run.sh --setup=yes --config=configs/cifar10.py --workdir=runs/c10
  launch/gpu_run.sh --processes=8 --config=configs/imagenet100.py \
    --workdir=runs/in100
USAGE
}

# The venv's pins (requirements.txt) were resolved and tested on 3.11.
REQUIRED_PYTHON=3.11

require_python_version() {
  local found
  if ! command -v "${PYTHON}" >/dev/null; then
    complain "--python=${PYTHON} is not on PATH; install Python ${REQUIRED_PYTHON} (python.org, 'sudo apt-get install python${REQUIRED_PYTHON} python${REQUIRED_PYTHON}-venv', 'uv python install ${REQUIRED_PYTHON}' or conda) and pass --python=python${REQUIRED_PYTHON}."
    return
  fi
  found="$("${PYTHON}" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  [[ "${found}" == "${REQUIRED_PYTHON}" ]] \
    || complain "--python=${PYTHON} is Python ${found}, but requirements.txt is pinned for Python ${REQUIRED_PYTHON}: install it (python.org, 'sudo apt-get install python${REQUIRED_PYTHON} python${REQUIRED_PYTHON}-venv', 'uv python install ${REQUIRED_PYTHON}' or conda) and pass --python=python${REQUIRED_PYTHON}."
}

# run_in_background LOG COMMAND...: like `run`, in the background; output to
# LOG unless it is empty. Appends the pid to PIDS.
PIDS=()
run_in_background() {
  local log="$1"
  shift
  echo "+ $(shell_quote "$@")${log:+ > $(shell_quote "${log}") 2>&1} &"
  if [[ "${DRY_RUN}" == 0 ]]; then
    if [[ -n "${log}" ]]; then
      "$@" >"${log}" 2>&1 &
    else
      "$@" &
    fi
    PIDS+=("$!")
  fi
}

STOPPING=0
stop_all() {
  STOPPING=1
  kill -TERM "${PIDS[@]}" 2>/dev/null || true
}

# Waits for every process; the first failure (or a signal to this script,
# trapped before the first start) sends SIGTERM to the others. Exits with the
# last non-zero status.
wait_for_all() {
  local pid status=0
  while [[ -n "$(jobs -pr)" ]]; do
    wait -n || stop_all
  done
  for pid in "${PIDS[@]}"; do
    wait "${pid}" || status=$?
  done
  exit "${status}"
}

SETTINGS=(CONFIG WORKDIR TFDS_DATA_DIR PROCESSES COORDINATOR_PORT LOG_DIR SETUP
  VENV PYTHON JAX_VERSION)
SETUP="${SETUP:-no}"
VENV="${VENV:-${REPO_ROOT}/.venv-gpu}"
PYTHON="${PYTHON:-python3}"
JAX_VERSION="${JAX_VERSION:-$(pinned_jax_version)}"
TFDS_DATA_DIR="${TFDS_DATA_DIR:-}"
PROCESSES="${PROCESSES:-1}"
COORDINATOR_PORT="${COORDINATOR_PORT:-12321}"
LOG_DIR="${LOG_DIR:-${REPO_ROOT}/runs/logs}"
parse_flags "$@"
require CONFIG WORKDIR JAX_VERSION
require_one_of SETUP "${SETUP}" yes no
[[ "${PROCESSES}" =~ ^[1-9][0-9]*$ ]] \
  || die "PROCESSES='${PROCESSES}' must be a positive number (1, or one per GPU)."
[[ "${COORDINATOR_PORT}" =~ ^[0-9]+$ ]] \
  || die "COORDINATOR_PORT='${COORDINATOR_PORT}' must be a port number."

if [[ "${SETUP}" == yes ]]; then
  require_python_version
  run "${PYTHON}" -m venv "${VENV}"
  run "${VENV}/bin/pip" install -q --upgrade pip
  run "${VENV}/bin/pip" install -q -r "${REPO_ROOT}/requirements.txt"
  run "${VENV}/bin/pip" install -q "jax[cuda12]==${JAX_VERSION}"
  run "${VENV}/bin/pip" install -q --no-deps -e "${REPO_ROOT}"
fi

environment=()
if [[ -n "${TFDS_DATA_DIR}" ]]; then
  environment=(TFDS_DATA_DIR="${TFDS_DATA_DIR}")
fi
# Fail early, before any data loading, if JAX does not see enough GPUs.
run "${VENV}/bin/python" -c \
  'import sys, jax; d = jax.devices(); assert d[0].platform == "gpu" and len(d) >= int(sys.argv[1]), d; print(len(d), "GPUs:", d)' \
  "${PROCESSES}"
main=("${VENV}/bin/python" -m mio_jax.main --config="${CONFIG}"
  --workdir="${WORKDIR}")

if [[ "${PROCESSES}" == 1 ]]; then
  run env "${environment[@]}" "${main[@]}" "${EXTRA_ARGS[@]}"
  exit 0
fi

run mkdir -p "${LOG_DIR}"
trap stop_all TERM INT
for ((i = 0; i < PROCESSES && STOPPING == 0; i++)); do
  log=""
  if ((i > 0)); then
    log="${LOG_DIR}/process_${i}.log"
  fi
  run_in_background "${log}" env "${environment[@]}" JAX_LOCAL_DEVICE_IDS="${i}" \
    "${main[@]}" --coordinator_address="localhost:${COORDINATOR_PORT}" \
    --num_processes="${PROCESSES}" --process_id="${i}" "${EXTRA_ARGS[@]}"
done
if [[ "${DRY_RUN}" == 0 ]]; then
  wait_for_all
fi
