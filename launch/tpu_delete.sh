#!/usr/bin/env bash
# Deletes a Cloud TPU VM (or its queued resource request).
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
Usage: launch/tpu_delete.sh [flags]

Deletes the TPU VM created by launch/tpu_create.sh; gcloud asks to confirm.
The workdir and data in gs:// stay. Stop the run first (tpu_stop.sh) if you
want a final checkpoint.

  --tpu-name            TPU VM name                            (required)
  --project             Google Cloud project id                (required)
  --zone                zone of the TPU VM                     (required)
  --provisioning        as given to tpu_create.sh; queued, queued-spot and
                        queued-reserved delete the queued resource and its VM
                                                            (default on-demand)
  --queued-resource-id  default: TPU_NAME-qr
  --dry-run             print the command, run nothing
  --help                this text
USAGE
}

SETTINGS=(TPU_NAME PROJECT ZONE PROVISIONING QUEUED_RESOURCE_ID)
PROVISIONING="${PROVISIONING:-on-demand}"
parse_flags "$@"
require TPU_NAME
provisioning_kind
delete_tpu "${TPU_KIND}"
