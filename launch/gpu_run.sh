#!/usr/bin/env bash
# Sets up (optionally) and runs a config on one host with several GPUs.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
Usage: launch/gpu_run.sh [flags] [-- --config.key=value ...]

Runs `python -m mio_jax.main` as ONE process on this machine; JAX puts every
local GPU in the data-parallel mesh (no distributed flags needed). With
--setup=yes it first creates the virtual environment with jax[cuda12] at the
jax version pinned in requirements.txt (needs an NVIDIA driver; CUDA itself
comes from pip).

  --config         config file, e.g. configs/cifar10.py           (required)
  --workdir        local or gs:// directory for checkpoints, metrics (required)
  --tfds-data-dir  TFDS data directory (default: $TFDS_DATA_DIR or
                   ~/tensorflow_datasets)
  --setup          yes | no: create/update the venv first       (default no)
  --venv           virtual environment directory            (default .venv-gpu)
  --python         Python >= 3.11 used to create the venv   (default python3)
  --jax-version    default: the jax pin of requirements.txt
  --dry-run        print the commands, run nothing
  --help           this text
Arguments after `--` go to mio_jax.main (e.g. --config.batch_size=1024).

Example:
  launch/gpu_run.sh --setup=yes --config=configs/cifar10.py --workdir=runs/c10
USAGE
}

SETTINGS=(CONFIG WORKDIR TFDS_DATA_DIR SETUP VENV PYTHON JAX_VERSION)
SETUP="${SETUP:-no}"
VENV="${VENV:-${REPO_ROOT}/.venv-gpu}"
PYTHON="${PYTHON:-python3}"
JAX_VERSION="${JAX_VERSION:-$(pinned_jax_version)}"
TFDS_DATA_DIR="${TFDS_DATA_DIR:-}"
parse_flags "$@"
require CONFIG WORKDIR JAX_VERSION
require_one_of SETUP "${SETUP}" yes no

if [[ "${SETUP}" == yes ]]; then
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
# Fail early, before any data loading, if JAX does not see the GPUs.
run "${VENV}/bin/python" -c \
  'import jax; d = jax.devices(); assert d[0].platform == "gpu", d; print(len(d), "GPUs:", d)'
run env "${environment[@]}" "${VENV}/bin/python" -m mio_jax.main \
  --config="${CONFIG}" --workdir="${WORKDIR}" "${EXTRA_ARGS[@]}"
