#!/usr/bin/env bash
# Starts a training config on every worker of a Cloud TPU VM.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
Usage: launch/tpu_run.sh [flags] [-- --config.key=value ...]

Starts `python -m mio_jax.main` on all workers at once (JAX finds the other
workers by itself), detached from the ssh session, logging to
~/mio_jax_run.log on each worker; then streams worker 0's log (Ctrl-C stops
the streaming, not the run). Rerunning the same command after a preemption
resumes from the latest checkpoint in the workdir. Stops first if the TPU VM
is not READY (e.g. PREEMPTED: recreate it with tpu_create.sh --recreate=yes),
and, where libtpu is installed here (make libtpu), if the config's steps do
not fit the VM's accelerator type: they are compiled for it on this machine
first (python -m mio_jax.cli.tpu_compile), and nothing starts when one does
not fit (the line names the largest batch that fits).

  --tpu-name       TPU VM name                                    (required)
  --project        Google Cloud project id                        (required)
  --zone           zone of the TPU VM                             (required)
  --config         config file, e.g. configs/imagenet100.py       (required)
  --workdir        gs:// directory for checkpoints, metrics, plots (required)
  --tfds-data-dir  gs:// TFDS data directory with the prepared dataset (required)
  --follow         yes | no: stream worker 0's log afterwards (default yes)
  --remote-dir     code directory under the workers' home (default mio_jax)
  --accelerator-type  the VM's type, e.g. v4-8 (default: asked from gcloud)
  --compile-check  auto | yes | no: compile the config for the type first;
                   auto where libtpu is installed, yes requires it (default auto)
  --local-python   the Python that compiles      (default .venv/bin/python)
  --dry-run        print the commands, run nothing
  --help           this text
Arguments after `--` go to mio_jax.main (e.g. --config.batch_size=1024).

Example:
  launch/tpu_run.sh --tpu-name=mio-v4-32 --project=my-proj --zone=us-central2-b \
    --config=configs/imagenet100.py --workdir=gs://my-bucket/mio/in100 \
    --tfds-data-dir=gs://my-bucket/tfds -- --config.num_epochs=400
USAGE
}

SETTINGS=(TPU_NAME PROJECT ZONE CONFIG WORKDIR TFDS_DATA_DIR FOLLOW REMOTE_DIR
  ACCELERATOR_TYPE COMPILE_CHECK LOCAL_PYTHON)
FOLLOW="${FOLLOW:-yes}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-}"
parse_flags "$@"
require TPU_NAME CONFIG
require_gcs WORKDIR
require_gcs TFDS_DATA_DIR
require_one_of FOLLOW "${FOLLOW}" yes no
require_one_of COMPILE_CHECK "${COMPILE_CHECK}" auto yes no
require_ready_tpu
compile_check "${ACCELERATOR_TYPE}" "${CONFIG}" "${EXTRA_ARGS[@]}"

main_command="$(shell_quote env TFDS_DATA_DIR="${TFDS_DATA_DIR}" \
  .venv/bin/python -m mio_jax.main --config="${CONFIG}" --workdir="${WORKDIR}" \
  "${EXTRA_ARGS[@]}")"
log="\"\$HOME\"/${REMOTE_LOG}"
pid="\"\$HOME\"/${REMOTE_PID}"
# Refuse to start a second run next to a live one; setsid + nohup keep the
# run alive when ssh disconnects, and its pid lets tpu_stop.sh send SIGTERM.
remote_run="set -e; cd $(shell_quote "${REMOTE_DIR}")"
remote_run+="; if [ -f ${pid} ] && kill -0 \"\$(cat ${pid})\" 2>/dev/null; then"
remote_run+=" echo \"a run is already going (pid \$(cat ${pid})); stop it with launch/tpu_stop.sh\" >&2; exit 1; fi"
remote_run+="; nohup setsid ${main_command} > ${log} 2>&1 < /dev/null &"
remote_run+=" echo \$! > ${pid}; echo \"\$(hostname): started pid \$!\""
tpu_ssh all "${remote_run}"

if [[ "${FOLLOW}" == yes ]]; then
  follow_logs 0 100
fi
