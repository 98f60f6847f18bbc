#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the checks: ruff, then the test suite. The tests run the real
# Triton kernels through Triton's CPU interpreter (tests/conftest.py sets TRITON_INTERPRET=1) and
# compile every kernel configuration ahead of time for sm_90 (no GPU needed; tests/conftest.py starts that
# compile in the background at once, beside the interpreter tests).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k parity`; CBAM_TEST_WORKERS sets the
# number of pytest-xdist workers (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
# two workers (pytest-xdist), one test file per worker at a time (module fixtures such as the
# ahead-of-time compile gate run once): the compile gate runs beside the interpreter tests
# the compile gate's set (tests/test_aot_compile.py): the --quick tile set in fp16 and fp64 for sm_90 (fp16: the
# half-precision loads/stores and conversions; fp64: the fp64-accumulation branches)
# keeps CI within its time budget; CBAM_AOT_OPTIONS="" compiles the whole default set
export CBAM_AOT_OPTIONS="${CBAM_AOT_OPTIONS---quick --dtypes fp16 fp64}"
.venv/bin/python -m pytest -n "${CBAM_TEST_WORKERS:-2}" --dist loadfile "$@"
