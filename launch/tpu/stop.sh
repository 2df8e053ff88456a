#!/usr/bin/env bash
# Stops training on every worker with SIGTERM: the run saves a checkpoint and exits (rerun
# train.sh with the same WORKDIR to resume).
#   PROJECT=p ZONE=us-east5-a TPU_NAME=vidgen launch/tpu/stop.sh
source "$(dirname "$0")/env.sh"
# shellcheck disable=SC2016  # $(...) and ${pid} expand on the workers
on_workers all 'if [[ -f ~/vidgen_train.pid ]]; then
  pid=$(cat ~/vidgen_train.pid); kill -TERM "${pid}" 2>/dev/null || true
  while kill -0 "${pid}" 2>/dev/null; do sleep 5; done; rm -f ~/vidgen_train.pid
  echo "$(hostname): stopped ${pid}"; fi'
