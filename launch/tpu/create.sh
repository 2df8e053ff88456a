#!/usr/bin/env bash
# Requests a TPU VM or pod slice as a queued resource and waits until it is ACTIVE.
#   PROJECT=p ZONE=us-east5-a TPU_NAME=vidgen ACCELERATOR=v5p-256 launch/tpu/create.sh
# SPOT=1 asks for spot capacity; RESERVED=1 uses the project's reservation.
source "$(dirname "$0")/env.sh"
require ACCELERATOR
RUNTIME_VERSION="${RUNTIME_VERSION:-$(default_runtime "${ACCELERATOR}")}"
extra=()
[[ "${SPOT:-0}" == 1 ]] && extra+=(--spot)
[[ "${RESERVED:-0}" == 1 ]] && extra+=(--reserved)

"${GCLOUD_TPU[@]}" queued-resources create "${TPU_NAME}" --zone="${ZONE}" \
  --node-id="${TPU_NAME}" --accelerator-type="${ACCELERATOR}" \
  --runtime-version="${RUNTIME_VERSION}" "${extra[@]}"

while true; do
  state=$("${GCLOUD_TPU[@]}" queued-resources describe "${TPU_NAME}" --zone="${ZONE}" \
    --format="value(state.state)")
  echo "$(date +%T) ${TPU_NAME}: ${state}"
  case "${state}" in
    ACTIVE) break ;;
    FAILED|SUSPENDED) echo "error: queued resource ${TPU_NAME} is ${state}" >&2; exit 1 ;;
  esac
  sleep 30
done
