# shellcheck shell=bash
# Variables set here are read by the scripts that source this file.
# shellcheck disable=SC2034
# Shared by the launch/*.sh scripts; sourced, never run.
#
# Settings come from flags (--tpu-name=NAME or --tpu-name NAME) or from the
# environment variable of the same name in capitals (TPU_NAME); flags win.
# Nothing here holds a project, zone or credential: gcloud uses the account
# you are logged in with.
#
# A script using this file defines:
#   usage()            its --help text,
#   SETTINGS=(...)     the settings (variable names) it accepts as flags,
# then calls `parse_flags "$@"` and uses `run` for every command with an
# effect, so that --dry-run prints exactly those commands and runs none.

LAUNCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${LAUNCH_DIR}/.." && pwd)"
DRY_RUN=0
EXTRA_ARGS=()

die() {
  echo "error: $*" >&2
  exit 2
}

# Quotes words for a shell command line, leaving plain words readable.
shell_quote() {
  local word words=()
  for word in "$@"; do
    if [[ "${word}" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
      words+=("${word}")
    else
      words+=("${word@Q}")
    fi
  done
  echo "${words[*]}"
}

# Prints a command shell-quoted (copy-pastable), then runs it unless --dry-run.
run() {
  echo "+ $(shell_quote "$@")"
  if [[ "${DRY_RUN}" == 0 ]]; then
    "$@"
  fi
}

# A problem found by a query: an error, or only a warning with --dry-run (so
# a dry run still shows every command, e.g. before the TPU VM exists).
complain() {
  if [[ "${DRY_RUN}" == 0 ]]; then
    die "$@"
  fi
  echo "warning (dry run goes on): $*" >&2
}

# --help, --dry-run, --some-setting=VALUE for each name in SETTINGS; anything
# after `--` lands in EXTRA_ARGS (e.g. --config.key=value overrides).
parse_flags() {
  while (($#)); do
    case "$1" in
      -h | --help)
        usage
        echo
        echo "Each setting may also come from the environment variable of the same"
        echo "name in capitals (--tpu-name: TPU_NAME); a flag wins over the variable."
        exit 0
        ;;
      --dry-run)
        DRY_RUN=1
        ;;
      --)
        shift
        EXTRA_ARGS=("$@")
        return 0
        ;;
      --*)
        local key="${1#--}" value
        if [[ "${key}" == *=* ]]; then
          value="${key#*=}"
          key="${key%%=*}"
        else
          (($# >= 2)) || die "flag --${key} needs a value (see --help)."
          value="$2"
          shift
        fi
        local name
        name="$(tr 'a-z-' 'A-Z_' <<<"${key}")"
        [[ " ${SETTINGS[*]} " == *" ${name} "* ]] \
          || die "unknown flag --${key}; this script takes: $(settings_as_flags) (see --help)."
        printf -v "${name}" '%s' "${value}"
        ;;
      *)
        die "unexpected argument '$1'; put config overrides after '--' (see --help)."
        ;;
    esac
    shift
  done
}

settings_as_flags() {
  local name flags=()
  for name in "${SETTINGS[@]}"; do
    flags+=("--$(tr 'A-Z_' 'a-z-' <<<"${name}")")
  done
  echo "${flags[*]} --dry-run --help"
}

# require NAME...: each setting must be non-empty.
require() {
  local name flag
  for name in "$@"; do
    if [[ -z "${!name:-}" ]]; then
      flag="--$(tr 'A-Z_' 'a-z-' <<<"${name}")"
      die "${name} is not set: pass ${flag}=... or export ${name}=... (see --help)."
    fi
  done
}

# require_one_of NAME VALUE ALLOWED...: VALUE must be one of ALLOWED.
require_one_of() {
  local name="$1" value="$2"
  shift 2
  [[ " $* " == *" ${value} "* ]] \
    || die "${name}='${value}' is not valid; use one of: $*."
}

# require_gcs NAME: the setting must be a gs:// path, which every worker of a
# TPU slice can read and write (a local path would differ per worker).
require_gcs() {
  require "$1"
  [[ "${!1}" == gs://* ]] \
    || die "$1='${!1}' must be a gs:// path shared by all workers, e.g. gs://BUCKET/mio_jax/run1."
}

# The jax version pinned in requirements.txt; jax[tpu]/jax[cuda12] must match.
pinned_jax_version() {
  sed -n 's/^jax==//p' "${REPO_ROOT}/requirements.txt"
}

# Arguments shared by every `gcloud compute tpus ...` call.
gcloud_location_args() {
  require PROJECT ZONE
  GCLOUD_LOCATION=(--project="${PROJECT}" --zone="${ZONE}")
}

# How a TPU VM is obtained: directly (on-demand, spot: preemptible at any
# time, reserved: from the project's reservation) or through a queued
# resource request that waits for capacity (queued-*).
PROVISIONING_MODES=(on-demand spot queued queued-spot reserved queued-reserved)

# Sets TPU_KIND: "queued" for a queued resource request, else "node".
provisioning_kind() {
  require_one_of PROVISIONING "${PROVISIONING}" "${PROVISIONING_MODES[@]}"
  TPU_KIND=node
  if [[ "${PROVISIONING}" == queued* ]]; then
    TPU_KIND=queued
    QUEUED_RESOURCE_ID="${QUEUED_RESOURCE_ID:-${TPU_NAME}-qr}"
  fi
}

# States after which a TPU VM or queued resource never comes back: it has to
# be deleted and created again (the workdir in gs:// is kept, so the run
# resumes). A Spot VM that is preempted goes to PREEMPTED (TERMINATED after
# maintenance); a queued resource whose VM was preempted to SUSPENDING then
# SUSPENDED, and one that could not be served to FAILED.
DEAD_STATES=(PREEMPTED TERMINATED SUSPENDING SUSPENDED FAILED)

# tpu_state node|queued: sets TPU_STATE to what `gcloud ... describe` reports
# (READY, PREEMPTED, ... for a node; ACTIVE, SUSPENDED, ... for a queued
# resource), or NOT_FOUND. A read-only query: it runs even with --dry-run,
# shown on stderr with a "?" instead of "+".
tpu_state() {
  local describe output
  gcloud_location_args
  if [[ "$1" == queued ]]; then
    describe=(gcloud compute tpus queued-resources describe
      "${QUEUED_RESOURCE_ID}" "${GCLOUD_LOCATION[@]}" --format='value(state.state)')
  else
    describe=(gcloud compute tpus tpu-vm describe "${TPU_NAME}"
      "${GCLOUD_LOCATION[@]}" --format='value(state)')
  fi
  echo "? $(shell_quote "${describe[@]}")" >&2
  if output="$("${describe[@]}" 2>&1)"; then
    TPU_STATE="$(tail -n 1 <<<"${output}")"
  elif [[ "${output}" == *NOT_FOUND* ]]; then
    TPU_STATE=NOT_FOUND
  else
    TPU_STATE=UNKNOWN
    complain "could not read the state of ${TPU_NAME} ($(grep -m 1 ERROR <<<"${output}" \
      || head -n 1 <<<"${output}")); check gcloud auth list and the project, zone and name."
  fi
}

is_dead_state() {
  [[ " ${DEAD_STATES[*]} " == *" $1 "* ]]
}

# accelerator_type: sets ACCELERATOR_TYPE to the TPU VM's (e.g. v4-8), as
# `gcloud ... describe` reports it. A read-only query, run even with --dry-run.
accelerator_type() {
  local describe output
  gcloud_location_args
  describe=(gcloud compute tpus tpu-vm describe "${TPU_NAME}"
    "${GCLOUD_LOCATION[@]}" --format='value(acceleratorType)')
  echo "? $(shell_quote "${describe[@]}")" >&2
  if output="$("${describe[@]}" 2>&1)" && [[ -n "${output}" ]]; then
    ACCELERATOR_TYPE="$(tail -n 1 <<<"${output}")"
  else
    complain "could not read the accelerator type of ${TPU_NAME}; pass --accelerator-type=... or --compile-check=no."
  fi
}

# Before working on the workers: the TPU VM must exist and be READY.
require_ready_tpu() {
  tpu_state node
  case "${TPU_STATE}" in
    READY | UNKNOWN) ;;
    NOT_FOUND)
      complain "there is no TPU VM ${TPU_NAME} in ${ZONE}: create it with launch/tpu_create.sh."
      ;;
    *)
      if is_dead_state "${TPU_STATE}"; then
        complain "TPU VM ${TPU_NAME} is ${TPU_STATE} and will not come back: recreate it with launch/tpu_create.sh --recreate=yes (same flags as before), then run launch/tpu_setup.sh and this command again (the run resumes from its workdir)."
      else
        complain "TPU VM ${TPU_NAME} is ${TPU_STATE}, not READY: wait and retry (gcloud compute tpus tpu-vm describe shows the state)."
      fi
      ;;
  esac
}

# delete_tpu node|queued [GCLOUD_FLAG...]: deletes the TPU VM, or the queued
# resource together with its VM.
delete_tpu() {
  local kind="$1"
  shift
  gcloud_location_args
  if [[ "${kind}" == queued ]]; then
    run gcloud compute tpus queued-resources delete "${QUEUED_RESOURCE_ID}" \
      "${GCLOUD_LOCATION[@]}" --force "$@"
  else
    run gcloud compute tpus tpu-vm delete "${TPU_NAME}" "${GCLOUD_LOCATION[@]}" "$@"
  fi
}

# tpu_ssh WORKER COMMAND: runs COMMAND (one string) on WORKER (0, 1, ... or all).
tpu_ssh() {
  require TPU_NAME
  gcloud_location_args
  run gcloud compute tpus tpu-vm ssh "${TPU_NAME}" "${GCLOUD_LOCATION[@]}" \
    --worker="$1" --command="$2"
}

# follow_logs WORKER LINES: streams the run's log (see tpu_run.sh).
follow_logs() {
  [[ "$2" =~ ^[0-9]+$ ]] || die "TAIL_LINES='$2' must be a number of lines."
  tpu_ssh "$1" "tail -n $2 -F \"\$HOME\"/${REMOTE_LOG}"
}

# Where the code lives on each worker (relative to the home directory) and
# the files the run writes there.
REMOTE_DIR="${REMOTE_DIR:-mio_jax}"
REMOTE_LOG="mio_jax_run.log"
REMOTE_PID="mio_jax_run.pid"

# ---- the compile check: a config compiled for the slice before it runs -----

# Settings of the check (flags --compile-check, --local-python): auto runs it
# where libtpu is installed (make libtpu), yes requires it, no skips it.
COMPILE_CHECK="${COMPILE_CHECK:-auto}"
LOCAL_PYTHON="${LOCAL_PYTHON:-${REPO_ROOT}/.venv/bin/python}"

# libtpu_installed: whether LOCAL_PYTHON can compile for a TPU (a query).
libtpu_installed() {
  local query=("${LOCAL_PYTHON}" -c
    'import sys; from mio_jax.aot import topology; sys.exit(topology.libtpu_path() is None)')
  echo "? $(shell_quote "${query[@]}")" >&2
  "${query[@]}" >/dev/null 2>&1
}

# compile_check ACCELERATOR_TYPE CONFIG [ARG...]: compiles CONFIG's steps for
# that slice on this machine (python -m mio_jax.cli.tpu_compile, from the
# repository root, where the workers find CONFIG too; of ARG only the
# --config.key=value overrides) and stops with its one line when a step
# does not fit, before anything is created or started. An empty
# ACCELERATOR_TYPE is the existing TPU VM's, asked of gcloud only when the
# check runs. A dry run shows the check without running it.
compile_check() {
  local accelerator="$1" config_file="$2" arg overrides=()
  shift 2
  for arg in "$@"; do
    [[ "${arg}" != --config.* ]] || overrides+=("${arg}")
  done
  [[ "${COMPILE_CHECK}" != no ]] || return 0
  if [[ "${COMPILE_CHECK}" == auto && "${DRY_RUN}" != 1 ]] && ! libtpu_installed; then
    echo "note: ${config_file} was not compiled for ${accelerator:-the TPU VM} first: libtpu is not installed here (make libtpu; --compile-check=no skips the check)." >&2
    return 0
  fi
  if [[ -z "${accelerator}" ]]; then
    accelerator_type
    accelerator="${ACCELERATOR_TYPE}"
  fi
  local check=("${LOCAL_PYTHON}" -m mio_jax.cli.tpu_compile
    --config="${config_file}" --topology="${accelerator}" "${overrides[@]}")
  if [[ "${DRY_RUN}" == 1 ]]; then
    echo "? (not run in a dry run) $(shell_quote "${check[@]}")" >&2
    return 0
  fi
  echo "? $(shell_quote "${check[@]}")" >&2
  local output status=0
  output="$(cd "${REPO_ROOT}" && "${check[@]}" 2>&1)" || status=$?
  if ((status != 0)); then
    local line
    line="$(grep '^error: ' <<<"${output}" | tail -n 1 || true)"
    [[ -n "${line}" ]] \
      || line="error: the check ended with exit status ${status} and no message (a crash of the compiler?); run it to see its output: $(shell_quote "${check[@]}")"
    die "compile check for ${accelerator}: ${line#error: } (--compile-check=no skips the check)"
  fi
  grep -v -e '^ *compiling ' -e '^Compiling ' <<<"${output}" >&2 || true
}
