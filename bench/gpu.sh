#!/usr/bin/env bash
# The one-script device check of issue 32: bench/gpu.py from the repository root, with the
# repository on PYTHONPATH (a GPU machine with torch needs no installed rnd). See bench/gpu.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}" exec "${PYTHON:-python3}" bench/gpu.py "$@"
