#!/usr/bin/env bash
# Deletes the queued resource and its TPU slice (what is on the workers' disks is lost; the
# checkpoints in WORKDIR stay).
#   PROJECT=p ZONE=us-east5-a TPU_NAME=vidgen launch/tpu/delete.sh
source "$(dirname "$0")/env.sh"
"${GCLOUD_TPU[@]}" queued-resources delete "${TPU_NAME}" --zone="${ZONE}" --force --quiet
