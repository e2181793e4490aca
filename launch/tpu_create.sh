#!/usr/bin/env bash
# Creates a Cloud TPU VM (one host like v5litepod-8 or a slice like v4-32).
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
Usage: launch/tpu_create.sh [flags] [-- --config.key=value ...]

Creates a Cloud TPU VM with gcloud, unless it exists already. Given
--config, it first compiles that config for the accelerator type on this
machine (python -m mio_jax.cli.tpu_compile, where libtpu is installed:
make libtpu) and creates nothing when a step does not fit (the line names
the largest batch that fits). A VM that was
preempted (state PREEMPTED or TERMINATED) or a queued resource that was
suspended or failed (SUSPENDING, SUSPENDED, FAILED) never comes back: this
script says so and stops, or with --recreate=yes deletes and recreates it.

  --tpu-name          TPU VM (node) name, e.g. mio-v4-32           (required)
  --project           Google Cloud project id                      (required)
  --zone              zone with quota for the type, e.g. us-central2-b (required)
  --accelerator-type  TPU generation and size                       (required)
                        v4-8, v4-32, ...          (v4; 4 chips per host)
                        v5litepod-8, -16, ...     (v5e; 8 chips per host)
                        v5p-8, v5p-16, ...        (v5p; 4 chips per host)
                        v6e-8, v6e-16, ...        (v6e Trillium)
  --runtime-version   TPU software version; default by generation:
                        v4: tpu-ubuntu2204-base   v5e: v2-alpha-tpuv5-lite
                        v5p: v2-alpha-tpuv5       v6e: v2-alpha-tpuv6e
  --provisioning      how to get the capacity                (default on-demand)
                        on-demand | spot (cheaper, preemptible at any time)
                        | reserved (your project's reservation)
                        | queued | queued-spot | queued-reserved (a queued
                        resource request that waits for capacity)
  --queued-resource-id  name of the queued request (default: TPU_NAME-qr)
  --recreate          yes | no: delete and recreate a preempted, suspended
                      or failed one                               (default no)
  --config            a training config to compile for the type first,
                      e.g. configs/imagenet100.py (overrides after --)
  --compile-check     auto | yes | no: with --config, compile it first; auto
                      where libtpu is installed, yes requires it (default auto)
  --local-python      the Python that compiles   (default .venv/bin/python)
  --dry-run           print the gcloud commands, run none (the state query
                      still runs)
  --help              this text

Examples:
  launch/tpu_create.sh --tpu-name=mio-v5e-8 --project=my-proj \
    --zone=us-west4-a --accelerator-type=v5litepod-8 --provisioning=spot
  TPU_NAME=mio-v4-32 ACCELERATOR_TYPE=v4-32 PROVISIONING=queued \
    launch/tpu_create.sh --dry-run
  # After a preemption (same flags as the first time):
  launch/tpu_create.sh ... --provisioning=spot --recreate=yes
  # Compile the config for the type first; refuse if it does not fit:
  launch/tpu_create.sh --tpu-name=mio-v4-8 --project=my-proj \
    --zone=us-central2-b --accelerator-type=v4-8 \
    --config=configs/imagenet1k.py -- --config.batch_size=512
Then: launch/tpu_setup.sh, launch/tpu_run.sh.
USAGE
}

# The TPU software version JAX uses on each generation (Cloud TPU's "TPU
# software versions" page, docs/multihost.md).
default_runtime_version() {
  case "$1" in
    v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
  esac
}

SETTINGS=(TPU_NAME PROJECT ZONE ACCELERATOR_TYPE RUNTIME_VERSION PROVISIONING
  QUEUED_RESOURCE_ID RECREATE CONFIG COMPILE_CHECK LOCAL_PYTHON)
CONFIG="${CONFIG:-}"
PROVISIONING="${PROVISIONING:-on-demand}"
RECREATE="${RECREATE:-no}"
RUNTIME_VERSION="${RUNTIME_VERSION:-}"
parse_flags "$@"
require TPU_NAME ACCELERATOR_TYPE
[[ "${ACCELERATOR_TYPE}" != v5e-* ]] \
  || die "ACCELERATOR_TYPE='${ACCELERATOR_TYPE}': gcloud calls v5e v5litepod, e.g. v5litepod-${ACCELERATOR_TYPE#v5e-}."
RUNTIME_VERSION="${RUNTIME_VERSION:-$(default_runtime_version "${ACCELERATOR_TYPE}")}"
[[ -n "${RUNTIME_VERSION}" ]] \
  || die "no default runtime version for ACCELERATOR_TYPE='${ACCELERATOR_TYPE}' (known: v4-*, v5litepod-*, v5p-*, v6e-*); pass --runtime-version=..."
require_one_of RECREATE "${RECREATE}" yes no
require_one_of COMPILE_CHECK "${COMPILE_CHECK}" auto yes no
provisioning_kind
gcloud_location_args

if [[ "${TPU_KIND}" == queued ]]; then
  what="queued resource ${QUEUED_RESOURCE_ID}"
else
  what="TPU VM ${TPU_NAME}"
fi
tpu_state "${TPU_KIND}"
if is_dead_state "${TPU_STATE}"; then
  [[ "${RECREATE}" == yes ]] || die "${what} is ${TPU_STATE} and will not come back: delete and recreate it with launch/tpu_delete.sh and this command, or rerun this command with --recreate=yes (the workdir in gs:// is kept; tpu_setup.sh then tpu_run.sh resume the run)."
elif [[ "${TPU_STATE}" != NOT_FOUND && "${TPU_STATE}" != UNKNOWN ]]; then
  echo "${what} exists already (state ${TPU_STATE}); nothing to create."
  exit 0
fi
if [[ -n "${CONFIG}" ]]; then
  compile_check "${ACCELERATOR_TYPE}" "${CONFIG}" "${EXTRA_ARGS[@]}"
fi
if is_dead_state "${TPU_STATE}"; then
  echo "${what} is ${TPU_STATE}: deleting it, then creating it again."
  delete_tpu "${TPU_KIND}" --quiet
fi

capacity=()
case "${PROVISIONING}" in
  *spot) capacity=(--spot) ;;
  *reserved) capacity=(--reserved) ;;
esac

if [[ "${TPU_KIND}" == node ]]; then
  run gcloud compute tpus tpu-vm create "${TPU_NAME}" "${GCLOUD_LOCATION[@]}" \
    --accelerator-type="${ACCELERATOR_TYPE}" --version="${RUNTIME_VERSION}" \
    "${capacity[@]}"
else
  run gcloud compute tpus queued-resources create "${QUEUED_RESOURCE_ID}" \
    "${GCLOUD_LOCATION[@]}" --node-id="${TPU_NAME}" \
    --accelerator-type="${ACCELERATOR_TYPE}" \
    --runtime-version="${RUNTIME_VERSION}" "${capacity[@]}"
  echo "Queued. The TPU VM exists once this shows state ACTIVE:"
  echo "  gcloud compute tpus queued-resources describe $(shell_quote "${QUEUED_RESOURCE_ID}" "${GCLOUD_LOCATION[@]}")"
fi
