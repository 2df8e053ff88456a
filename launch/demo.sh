#!/usr/bin/env bash
# The embedded demo: synthetic world -> tiny causal VAE -> held-out reconstructions.
# Run through `make demo` (which installs what it needs); all outputs land under ${DEMO_DIR}.
set -euo pipefail
cd "$(dirname "$0")/.."
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
DEMO_DIR="${DEMO_DIR:-runs/demo}"
WORLD="${DEMO_DIR}/world"
WORKDIR="${DEMO_DIR}/vae_tiny"

echo "== 1/2 synthetic world -> ${WORLD}"
if [[ ! -f "${WORLD}/captions.jsonl" ]]; then
  python -m data_pipelines.synthetic_world --out="${WORLD}" --num_clips=400 \
    --num_eval_clips=16 --base_size=128 --num_shards=4
fi

echo "== 2/2 tiny VAE -> ${WORKDIR} (resumes if interrupted)"
python -m launch.train --config=launch/configs/vae_tiny.py --workdir="${WORKDIR}" \
  --config.data.path="${WORLD}" "$@"

echo "== done: reconstructions (mp4 + PNG strips) under ${WORKDIR}/eval/, TensorBoard logs in ${WORKDIR}"
ls -d "${WORKDIR}"/eval/step_* | tail -1
