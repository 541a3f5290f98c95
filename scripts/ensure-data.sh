#!/usr/bin/env bash
# Make sure Fashion-MNIST is on disk (Debian package dataset-fashion-mnist); idempotent.
set -euo pipefail
dir="${LOWBIT_DATA:-/usr/share/datasets/fashion-mnist}"
if [ -f "$dir/t10k-images-idx3-ubyte.gz" ] && [ -f "$dir/train-images-idx3-ubyte.gz" ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  echo "Fashion-MNIST not found in $dir: installing the Debian package dataset-fashion-mnist" >&2
  apt-get update -q && apt-get install -y -q dataset-fashion-mnist
  exit 0
fi
echo "error: Fashion-MNIST not found in $dir. Install it with 'sudo apt-get install -y dataset-fashion-mnist'," >&2
echo "       or set LOWBIT_DATA to a folder holding the four gzip IDX files." >&2
exit 1
