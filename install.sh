#!/usr/bin/env bash
# Installs tlstm into ./.venv on a fresh machine: a virtual environment, PyTorch, the build of
# the extension (C++ kernels, and the CUDA kernels wherever nvcc and a CUDA build of torch are
# present) and the test dependencies. Running it again reuses what is there.
#
#   PYTHON=python3.11    the interpreter for the environment (default: python3)
#   TORCH_SPEC=...       what pip installs for torch (default: torch==2.14.1, a CUDA 13.0 build)
#   TLSTM_CPU_ONLY=1     skip the CUDA sources (faster build)
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/pip install -q "${TORCH_SPEC:-torch==2.14.1}"
fi
# matplotlib: the bench's --plot and the examples' plots; onnx, onnxruntime, onnxscript: ONNX
# export and its tests; scikit-learn: the 8x8 digits of examples/sequential_digits.py
.venv/bin/pip install -q numpy pytest ninja setuptools wheel matplotlib onnx onnxruntime onnxscript \
    scikit-learn
# --no-build-isolation: the extension builds against the torch just installed. The objects stay
# in build/objects, so that running this again recompiles only the sources that changed.
.venv/bin/pip install -q --no-build-isolation -e .
.venv/bin/python -c "import tlstm, torch; print('tlstm', tlstm.__version__, 'built for torch', torch.__version__, '(CUDA kernels: %s)' % tlstm.ops.has_cuda_kernels())"
