#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: a venv in .venv with compress installed (editable, with test extras),
# and the Fashion-MNIST IDX files from Debian's package when they are missing and apt is usable.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.compress-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! .venv/bin/python -c "import compress, torch, torch_pruning, onnxruntime, openvino, timm" 2>/dev/null; then
    .venv/bin/python -m pip install -q --upgrade pip
    # The package asks for ranges (torch>=2.4); the set-up installs the pair this machine holds on disk first,
    # so that pip never fetches a multi-GB build (see README).
    .venv/bin/python -m pip install -q "torch==${COMPRESS_TORCH:-2.14.1}" "torchvision==${COMPRESS_TORCHVISION:-0.29.1}"
    .venv/bin/python -m pip install -q -e ".[dev,all]"
    echo "$want" > "$stamp"
fi
fm=${COMPRESS_DATA:-/usr/share/datasets/fashion-mnist}
if [ ! -f "$fm/t10k-labels-idx1-ubyte.gz" ] && [ ! -f "$fm/t10k-labels-idx1-ubyte" ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "Fashion-MNIST missing: installing Debian's dataset-fashion-mnist" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
    else
        echo "warning: Fashion-MNIST not found in $fm and apt-get is not usable here;" \
             "install dataset-fashion-mnist or set COMPRESS_DATA" >&2
    fi
fi
