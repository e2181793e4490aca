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
