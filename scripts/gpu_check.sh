#!/usr/bin/env bash
# GPU acceptance run: one command that measures what a CUDA machine can tell about the library in
# under 8 minutes — environment, compute-sanitizer memcheck/racecheck/synccheck of a small driver,
# the test suite on the GPU, the benchmark that judges the speed targets — into exactly 8 files.
#
#   bash scripts/gpu_check.sh [OUT_DIR]          # a CUDA machine; default bench/results/<date>-<gpu>/
#   bash scripts/gpu_check.sh --dry [OUT_DIR]    # rehearsal on a CPU (interpreter, tiny shapes; CI runs it)
#   bash scripts/gpu_check.sh --help             # phases, budgets (CBAM_GPU_CHECK_BUDGET_*), --phases, --steps
#
# Needs nothing the GPU machine lacks: no install, the checkout is imported through PYTHONPATH.
# Python: $PYTHON, else the checkout's .venv if there is one, else python3. See bench/gpu_check.py.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"
    elif command -v python3 >/dev/null; then PY=python3
    else PY=python; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m bench.gpu_check "$@"
