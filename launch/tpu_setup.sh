#!/usr/bin/env bash
# Installs mio_jax and jax[tpu] on every worker of a Cloud TPU VM.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
Usage: launch/tpu_setup.sh [flags]

On every worker of the TPU VM: creates a Python virtual environment in
~/REMOTE_DIR/.venv, installs the pinned requirements, jax[tpu] at the jax
version pinned in requirements.txt, and mio_jax itself. Safe to rerun: with
--source=git a rerun fetches and checks out the newest commit of --git-ref.
Stops first if the TPU VM is not READY (e.g. PREEMPTED: see tpu_create.sh
--recreate).

  --tpu-name     TPU VM name                                   (required)
  --project      Google Cloud project id                       (required)
  --zone         zone of the TPU VM                            (required)
  --source       tarball | git                          (default tarball)
                 tarball: `git archive` of this checkout's HEAD, copied to
                 every worker with `gcloud compute tpus tpu-vm scp`;
                 git: every worker clones --repo-url (once), fetches, and
                 checks out --git-ref as of now (detached).
  --repo-url     git URL to clone (source=git)
  --git-ref      branch, tag or commit to check out (default main); a
                 branch means its newest commit on the remote
  --python       Python >= 3.11 on the workers (default python3.11; installed
                 with apt if missing)
  --jax-version  default: the jax pin of requirements.txt
  --remote-dir   directory under the workers' home (default mio_jax)
  --dry-run      print the commands, run nothing
  --help         this text

Example:
  launch/tpu_setup.sh --tpu-name=mio-v4-32 --project=my-proj --zone=us-central2-b
USAGE
}

SETTINGS=(TPU_NAME PROJECT ZONE SOURCE REPO_URL GIT_REF PYTHON JAX_VERSION
  REMOTE_DIR)
SOURCE="${SOURCE:-tarball}"
GIT_REF="${GIT_REF:-main}"
PYTHON="${PYTHON:-python3.11}"
JAX_VERSION="${JAX_VERSION:-$(pinned_jax_version)}"
parse_flags "$@"
require TPU_NAME JAX_VERSION
require_one_of SOURCE "${SOURCE}" tarball git
gcloud_location_args
require_ready_tpu

dir="$(shell_quote "${REMOTE_DIR}")"
case "${SOURCE}" in
  tarball)
    tarball="/tmp/mio_jax-$(whoami)-src.tar.gz"
    if [[ "${DRY_RUN}" == 0 && -n "$(git -C "${REPO_ROOT}" status --porcelain \
      --untracked-files=no)" ]]; then
      echo "warning: uncommitted changes are not copied (the tarball is HEAD)." >&2
    fi
    run git -C "${REPO_ROOT}" archive --format=tar.gz --output="${tarball}" HEAD
    run gcloud compute tpus tpu-vm scp "${tarball}" "${TPU_NAME}:mio_jax-src.tar.gz" \
      "${GCLOUD_LOCATION[@]}" --worker=all
    fetch_code="mkdir -p ${dir} && tar -xzf mio_jax-src.tar.gz -C ${dir}"
    ;;
  git)
    require REPO_URL
    ref="$(shell_quote "${GIT_REF}")"
    # A branch is checked out as origin/<branch> (detached): the remote's
    # newest commit, never a local branch left behind by an earlier run. A
    # tag or commit as itself; --force lets a moved tag follow the remote.
    fetch_code="{ [ -d ${dir}/.git ] || git clone $(shell_quote "${REPO_URL}") ${dir}; }"
    fetch_code+=" && git -C ${dir} fetch --force --tags origin"
    fetch_code+=" && if git -C ${dir} rev-parse -q --verify origin/${ref} >/dev/null;"
    fetch_code+=" then git -C ${dir} checkout origin/${ref};"
    fetch_code+=" else git -C ${dir} checkout ${ref}; fi"
    fetch_code+=" && git -C ${dir} log -1 --format='%h %cd %s'"
    ;;
esac

python="$(shell_quote "${PYTHON}")"
# Runs on each worker. TensorFlow (CPU) only feeds data; jax[tpu] adds
# libtpu on top of the pinned CPU jaxlib of requirements.txt.
remote_setup="set -e; ${fetch_code}"
remote_setup+=" && { command -v ${python} >/dev/null || { sudo apt-get update -q"
remote_setup+=" && sudo apt-get install -y -q ${python} ${python}-venv; }; }"
remote_setup+=" && cd ${dir} && ${python} -m venv .venv"
remote_setup+=" && .venv/bin/pip install -q --upgrade pip"
remote_setup+=" && .venv/bin/pip install -q -r requirements.txt"
remote_setup+=" && .venv/bin/pip install -q $(shell_quote "jax[tpu]==${JAX_VERSION}")"
remote_setup+=" && .venv/bin/pip install -q --no-deps -e ."
remote_setup+=" && .venv/bin/python -c 'import jax; print(jax.process_index(), jax.local_device_count(), jax.devices()[0].device_kind)'"
tpu_ssh all "${remote_setup}"
