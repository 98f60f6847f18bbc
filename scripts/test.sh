#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the checks: ruff, then the test suite. The tests run the real
# Triton kernels through Triton's CPU interpreter (tests/conftest.py sets TRITON_INTERPRET=1) and
# compile every kernel configuration ahead of time for sm_80/sm_90 (no GPU needed).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k parity`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
