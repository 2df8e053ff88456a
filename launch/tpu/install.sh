#!/usr/bin/env bash
# Copies this checkout (tracked and untracked, not ignored, files) to every worker of the slice
# and installs vidgen with libtpu into ~/venv there, on Python 3.11 from the image's apt
# (TPU VM images ship 3.10; vidgen needs >= 3.11).
#   PROJECT=p ZONE=us-east5-a TPU_NAME=vidgen launch/tpu/install.sh
source "$(dirname "$0")/env.sh"
cd "$(dirname "$0")/../.."
archive="$(mktemp -d)/vidgen.tar.gz"
git ls-files -z --cached --others --exclude-standard \
  | tar czf "${archive}" --null --ignore-failed-read -T -
"${GCLOUD_TPU[@]}" tpu-vm scp "${archive}" "${TPU_NAME}:vidgen.tar.gz" --zone="${ZONE}" \
  --worker=all
on_workers all 'set -e
  sudo apt-get -qq update && sudo apt-get -qq install -y python3.11 python3.11-venv
  rm -rf ~/vidgen && mkdir -p ~/vidgen && tar xzf ~/vidgen.tar.gz -C ~/vidgen
  python3.11 -m venv ~/venv && ~/venv/bin/pip install -q --upgrade pip
  ~/venv/bin/pip install -q -e ~/vidgen"[tpu]"
  ~/venv/bin/python -c "import jax, libtpu, vidgen; print(jax.__version__, \"ok\")"'
rm -f "${archive}"
