#!/usr/bin/env bash
# Follows the training log of one worker (WORKER, default 0: the one that logs progress).
#   PROJECT=p ZONE=us-east5-a TPU_NAME=vidgen launch/tpu/logs.sh
source "$(dirname "$0")/env.sh"
on_workers "${WORKER:-0}" 'tail -n 100 -F ~/vidgen_train.log'
