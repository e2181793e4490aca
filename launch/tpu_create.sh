#!/usr/bin/env bash
# Creates a Cloud TPU VM (a single host like v4-8 or a slice like v4-32).
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
Usage: launch/tpu_create.sh [flags]

Creates a Cloud TPU VM with gcloud.

  --tpu-name          TPU VM (node) name, e.g. mio-v4-32           (required)
  --project           Google Cloud project id                      (required)
  --zone              zone with TPU quota, e.g. us-central2-b      (required)
  --accelerator-type  e.g. v4-8 (1 host) or v4-32 (4 hosts)        (required)
  --runtime-version   TPU software version, e.g. tpu-ubuntu2204-base (required)
  --provisioning      on-demand | spot | queued | queued-spot   (default on-demand)
                      spot: cheaper, can be preempted at any time;
                      queued*: a queued resource request that waits for capacity.
  --queued-resource-id  name of the queued request (default: TPU_NAME-qr)
  --dry-run           print the gcloud command, run nothing
  --help              this text

Examples:
  launch/tpu_create.sh --tpu-name=mio-v4-8 --project=my-proj \
    --zone=us-central2-b --accelerator-type=v4-8 \
    --runtime-version=tpu-ubuntu2204-base --provisioning=spot
  TPU_NAME=mio-v4-32 ACCELERATOR_TYPE=v4-32 PROVISIONING=queued \
    launch/tpu_create.sh --dry-run
Then: launch/tpu_setup.sh, launch/tpu_run.sh.
USAGE
}

SETTINGS=(TPU_NAME PROJECT ZONE ACCELERATOR_TYPE RUNTIME_VERSION PROVISIONING
  QUEUED_RESOURCE_ID)
PROVISIONING="${PROVISIONING:-on-demand}"
parse_flags "$@"
require TPU_NAME ACCELERATOR_TYPE RUNTIME_VERSION
require_one_of PROVISIONING "${PROVISIONING}" on-demand spot queued queued-spot
gcloud_location_args

spot=()
if [[ "${PROVISIONING}" == *spot ]]; then
  spot=(--spot)
fi

case "${PROVISIONING}" in
  on-demand | spot)
    run gcloud compute tpus tpu-vm create "${TPU_NAME}" "${GCLOUD_LOCATION[@]}" \
      --accelerator-type="${ACCELERATOR_TYPE}" --version="${RUNTIME_VERSION}" \
      "${spot[@]}"
    ;;
  queued | queued-spot)
    QUEUED_RESOURCE_ID="${QUEUED_RESOURCE_ID:-${TPU_NAME}-qr}"
    run gcloud compute tpus queued-resources create "${QUEUED_RESOURCE_ID}" \
      "${GCLOUD_LOCATION[@]}" --node-id="${TPU_NAME}" \
      --accelerator-type="${ACCELERATOR_TYPE}" \
      --runtime-version="${RUNTIME_VERSION}" "${spot[@]}"
    echo "Queued. The TPU VM exists once this shows state ACTIVE:"
    echo "  gcloud compute tpus queued-resources describe $(shell_quote "${QUEUED_RESOURCE_ID}" "${GCLOUD_LOCATION[@]}")"
    ;;
esac
