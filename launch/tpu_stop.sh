#!/usr/bin/env bash
# Stops the training run on every worker of a Cloud TPU VM (SIGTERM: saves).
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
Usage: launch/tpu_stop.sh [flags]

Sends SIGTERM to the run started by launch/tpu_run.sh on every worker; the
trainer saves a checkpoint and exits, and rerunning tpu_run.sh resumes from
it. The TPU VM keeps running (and billing): delete it with tpu_delete.sh.

  --tpu-name  TPU VM name                                   (required)
  --project   Google Cloud project id                       (required)
  --zone      zone of the TPU VM                            (required)
  --dry-run   print the command, run nothing
  --help      this text
USAGE
}

SETTINGS=(TPU_NAME PROJECT ZONE)
parse_flags "$@"
pid="\"\$HOME\"/${REMOTE_PID}"
tpu_ssh all "if [ -f ${pid} ] && kill -TERM \"\$(cat ${pid})\" 2>/dev/null; then echo \"\$(hostname): SIGTERM sent\"; else echo \"\$(hostname): no run\"; fi"
