#!/usr/bin/env bash
# Create (or reuse) .venv with pinned torch and cbam-triton in editable mode with dev extras.
# torch 2.14.1 is a CUDA build that also runs on CPU and brings triton 3.8; pinning keeps a fresh
# machine from pulling a new multi-GB build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_PIN=${CBAM_TORCH_PIN:-torch==2.14.1}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torchvision must match torch (timm and ultralytics, used by the converter tests, need it)
.venv/bin/python -m pip install -q "$TORCH_PIN" "${CBAM_TORCHVISION_PIN:-torchvision==0.29.1}"
.venv/bin/python -m pip install -q -e '.[dev]'
.venv/bin/python -c "import torch, triton; print(f'setup: torch {torch.__version__}, triton {triton.__version__}')"
