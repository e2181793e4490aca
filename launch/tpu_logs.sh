#!/usr/bin/env bash
# Streams the training log of one worker (or all) of a Cloud TPU VM.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
Usage: launch/tpu_logs.sh [flags]

Follows ~/mio_jax_run.log, written by launch/tpu_run.sh. Ctrl-C stops the
streaming; the run goes on. Metrics also land in WORKDIR/metrics.jsonl and
TensorBoard events in WORKDIR (written by worker 0).

  --tpu-name    TPU VM name                                 (required)
  --project     Google Cloud project id                     (required)
  --zone        zone of the TPU VM                          (required)
  --worker      0, 1, ... or all                            (default 0)
  --tail-lines  lines of history to show first              (default 100)
  --dry-run     print the command, run nothing
  --help        this text
USAGE
}

SETTINGS=(TPU_NAME PROJECT ZONE WORKER TAIL_LINES)
WORKER="${WORKER:-0}"
TAIL_LINES="${TAIL_LINES:-100}"
parse_flags "$@"
follow_logs "${WORKER}" "${TAIL_LINES}"
