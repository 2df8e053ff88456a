#!/usr/bin/env bash
# Copies this checkout (tracked and untracked, not ignored, files) to every worker of the slice
# and installs vidgen with libtpu into ~/venv there.
#   PROJECT=p ZONE=us-east5-a TPU_NAME=vidgen launch/tpu/install.sh
source "$(dirname "$0")/env.sh"
cd "$(dirname "$0")/../.."
archive="$(mktemp -d)/vidgen.tar.gz"
git ls-files -z --cached --others --exclude-standard | tar czf "${archive}" --null -T -
"${GCLOUD_TPU[@]}" tpu-vm scp "${archive}" "${TPU_NAME}:vidgen.tar.gz" --zone="${ZONE}" \
  --worker=all
on_workers all 'set -e; rm -rf ~/vidgen && mkdir -p ~/vidgen && tar xzf ~/vidgen.tar.gz -C ~/vidgen
  python3 -m venv ~/venv && ~/venv/bin/pip install -q --upgrade pip
  ~/venv/bin/pip install -q -e ~/vidgen"[tpu]"
  ~/venv/bin/python -c "import jax; print(jax.process_index(), jax.local_device_count(), jax.devices()[0].device_kind)"'
rm -f "${archive}"
