#!/usr/bin/env bash
# Starts `python -m launch.train` on every worker (the same command on all hosts; each feeds its
# slice of the global batch), in the background, logging to ~/vidgen_train.log on each worker.
#   PROJECT=p ZONE=us-east5-a TPU_NAME=vidgen WORKDIR=gs://BUCKET/runs/dit_14b \
#     launch/tpu/train.sh --config=launch/configs/dit_14b.py:720p_5s --config.data.path=gs://...
# Rerunning with the same WORKDIR resumes from its latest checkpoint.
source "$(dirname "$0")/env.sh"
require WORKDIR
if [[ "${WORKDIR}" != gs://* ]]; then
  echo "error: WORKDIR=${WORKDIR}: every worker writes there, use a gs:// path" >&2
  exit 2
fi
args=$(printf ' %q' "--workdir=${WORKDIR}" "$@")
on_workers all "cd ~/vidgen && nohup ~/venv/bin/python -m launch.train${args} \
  > ~/vidgen_train.log 2>&1 < /dev/null & echo \$! > ~/vidgen_train.pid; \
  echo \"\$(hostname): started pid \$(cat ~/vidgen_train.pid)\""
