#!/usr/bin/env bash
# The oldest supported Triton: GPU machines with torch 2.11 run triton 3.6, while the main
# test environment has triton 3.8. This leg installs triton==3.6.0 (--no-deps) over the same pinned
# torch in a separate venv and runs the interpreter kernel tests and the ahead-of-time compile gate
# again, so an API that only newer Triton has is caught here. triton 3.6's interpreter needs numpy < 2.4.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-triton36
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q torch==2.14.1 'numpy<2.4' 'pytest>=8' 'pytest-xdist>=3' 'hypothesis>=6'
"$VENV/bin/python" -m pip install -q --no-deps triton==3.6.0
"$VENV/bin/python" -m pip install -q --no-deps -e .
"$VENV/bin/python" -c "import torch, triton; print(f'triton-3.6 leg: torch {torch.__version__}, triton {triton.__version__}')"
# the compile gate here: sm_90 (H100/H200), the --quick tile set in fp16 (the main leg compiles
# fp16/fp64 with triton 3.8)
# (the parity file without its three 2x64x128x128 seed configurations: the main leg runs those)
CBAM_AOT_ARCHS=90 CBAM_AOT_OPTIONS="--quick --dtypes fp16" "$VENV/bin/python" -m pytest -n "${CBAM_TEST_WORKERS:-2}" --dist loadfile tests/test_kernels.py tests/test_cbam_parity.py \
    tests/test_allocations.py tests/test_aot_compile.py -k "not seed_configuration" "$@"
# the backward kernels too: kernel-level formulas, every layout, max ties (the rest runs in the main leg)
"$VENV/bin/python" -m pytest -n "${CBAM_TEST_WORKERS:-2}" tests/test_backward.py -k "launchers or every_layout or ties" "$@"
# the fused forward's kernels (arrival counters, in-kernel combines, both conv paths) on triton 3.6
"$VENV/bin/python" -m pytest -n "${CBAM_TEST_WORKERS:-2}" tests/test_fused_forward.py -k "three_launches or conv_sizes or lone or interrupted" "$@"
# the NCHW window path (tl.gather, aligned windows) on triton 3.6
"$VENV/bin/python" -m pytest tests/test_windows.py "$@"
# no program of the fused forward has a serial tail (loads observed per program in this interpreter)
"$VENV/bin/python" -m pytest tests/test_program_work.py "$@"
# the fast path's direct launches pass exactly what this Triton's own binder binds (tests/test_fast_path.py)
"$VENV/bin/python" -m pytest tests/test_fast_path.py -k "direct_launch_passes" "$@"
