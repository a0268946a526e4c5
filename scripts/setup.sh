#!/usr/bin/env bash
# Set up datapipe in ./.venv on a fresh Debian/Ubuntu machine.
#   bash scripts/setup.sh          runtime only
#   bash scripts/setup.sh --dev    plus the test/lint tools (pytest, ruff, webdataset, ...)
#   bash scripts/setup.sh --bench  plus the peers the benchmarks measure (scripts/bench.py)
set -euo pipefail
cd "$(dirname "$0")/.."

EXTRAS=""
if [[ "${1:-}" == "--dev" ]]; then EXTRAS="[dev]"; fi
if [[ "${1:-}" == "--bench" ]]; then EXTRAS="[dev,bench]"; fi
PYTHON="${PYTHON:-python3}"

# System libraries: Open3D's wheel links libusb-1.0 and libgomp; jpeg.dct and the JPEG
# decoders read JPEGs through the system libturbojpeg. Installed with apt-get (through sudo
# when not root), only those missing.
SYSTEM_PACKAGES=(libturbojpeg0 libgomp1 libusb-1.0-0)
# the bench peers' OpenCV (pulled by PySceneDetect and mv-extractor) links libGL
if [[ "${1:-}" == "--bench" ]]; then SYSTEM_PACKAGES+=(libgl1); fi
if command -v apt-get >/dev/null 2>&1; then
    missing=()
    for pkg in "${SYSTEM_PACKAGES[@]}"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
        echo "installing system packages: ${missing[*]} (${SUDO:+sudo }apt-get)"
        $SUDO apt-get update -qq
        $SUDO apt-get install -y -qq "${missing[@]}"
    fi
else
    echo "no apt-get: make sure these libraries are installed: ${SYSTEM_PACKAGES[*]}" >&2
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
