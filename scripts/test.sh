#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the checks: ruff, then the test suite. The tests run the real
# Triton kernels through Triton's CPU interpreter (tests/conftest.py sets TRITON_INTERPRET=1) and
# compile every kernel configuration ahead of time for sm_80/sm_90 (no GPU needed).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k parity`; CBAM_TEST_WORKERS sets the
# number of pytest-xdist workers (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
# two workers (pytest-xdist), one test file per worker at a time (module fixtures such as the
# ahead-of-time compile gate run once): the compile gate runs beside the interpreter tests
.venv/bin/python -m pytest -n "${CBAM_TEST_WORKERS:-2}" --dist loadfile "$@"
