#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the benchmark (the main job). Extra arguments go to `python -m bench`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m bench "$@"
