#!/usr/bin/env bash
# Set up datapipe in ./.venv on a fresh Debian/Ubuntu machine.
#   bash scripts/setup.sh          runtime only
#   bash scripts/setup.sh --dev    plus the test/lint tools (pytest, ruff, webdataset, ...)
set -euo pipefail
cd "$(dirname "$0")/.."

EXTRAS=""
if [[ "${1:-}" == "--dev" ]]; then EXTRAS="[dev]"; fi
PYTHON="${PYTHON:-python3}"

# System libraries: Open3D's wheel links libusb-1.0 and libgomp; jpeg.dct reads DCT
# coefficients through the system libturbojpeg.
if command -v apt-get >/dev/null 2>&1; then
    missing=()
    for pkg in libusb-1.0-0 libgomp1 libturbojpeg0; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
        $SUDO apt-get update -qq
        $SUDO apt-get install -y -qq "${missing[@]}"
    fi
fi

if [[ ! -x .venv/bin/python ]]; then
    "$PYTHON" -m venv .venv
fi
PY=.venv/bin/python
$PY -m pip install -q --upgrade pip

# PyTorch: the CPU build when torch is missing (an unpinned `torch` pulls a multi-GB CUDA build).
if ! $PY -c "import torch" >/dev/null 2>&1; then
    $PY -m pip install -q "torch==2.13.0"
fi

$PY -m pip install -q -e ".${EXTRAS}"
echo "datapipe installed in $(pwd)/.venv"
