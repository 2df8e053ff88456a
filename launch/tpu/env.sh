# shellcheck shell=bash
# Settings shared by the launch/tpu scripts (sourced, not run). Set in the environment:
#   PROJECT      Google Cloud project                  (required)
#   ZONE         zone with TPU capacity, e.g. us-east5-a (required)
#   TPU_NAME     name of the queued resource and its TPU node (required)
#   ACCELERATOR  accelerator type, e.g. v5p-256, v6e-64, v5litepod-16 (create.sh only)
#   RUNTIME_VERSION  TPU VM image (default: the one for ACCELERATOR's generation)
#   WORKDIR      gs:// directory for checkpoints and logs (train.sh only)
set -euo pipefail

require() {
  local name
  for name in "$@"; do
    if [[ -z "${!name:-}" ]]; then
      echo "error: set ${name} (see launch/tpu/env.sh)" >&2
      exit 2
    fi
  done
}

require PROJECT ZONE TPU_NAME
GCLOUD_TPU=(gcloud compute tpus --project="${PROJECT}")

default_runtime() {   # the TPU VM image for an accelerator type's generation
  case "$1" in
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    v5litepod-*) echo "v2-alpha-tpuv5-lite" ;;
    v4-*) echo "tpu-ubuntu2204-base" ;;
    *) echo "error: no default RUNTIME_VERSION for ${1}; set it" >&2; exit 2 ;;
  esac
}

# Runs a shell command on TPU workers: on_workers WORKERS COMMAND (WORKERS: all, 0, 0,3, ...).
on_workers() {
  "${GCLOUD_TPU[@]}" tpu-vm ssh "${TPU_NAME}" --zone="${ZONE}" --worker="$1" --command="$2"
}
