#!/usr/bin/env bash
# Create ./.venv (Python 3.11) and install NeXtQSM with its test extras. Idempotent.
# torch is pinned to the CPU build that ships on the development machines (torch==2.13.0);
# on your own machine any torch >= 2.2 works (CUDA builds too).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.nextqsm-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q "torch==${NEXTQSM_TORCH_VERSION:-2.13.0}"
  .venv/bin/python -m pip install -q -e ".[test]"
  touch "$stamp"
fi
