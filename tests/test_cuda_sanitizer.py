"""compute-sanitizer over every CUDA kernel of tlstm (tests/cuda_sanitizer_workload.py): memcheck,
racecheck, initcheck and synccheck must report nothing. Minutes per tool, so opt-in:
TLSTM_RUN_SANITIZER=1 (and only where a GPU and compute-sanitizer exist)."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available"),
    pytest.mark.skipif(os.environ.get("TLSTM_RUN_SANITIZER") != "1",
                       reason="set TLSTM_RUN_SANITIZER=1 to run compute-sanitizer (minutes)"),
]


def sanitizer_path():
    return shutil.which("compute-sanitizer") or "/usr/local/cuda/bin/compute-sanitizer"


@pytest.mark.parametrize("tool", ["memcheck", "racecheck", "initcheck", "synccheck"])
def test_compute_sanitizer_reports_nothing(tool):
    sanitizer = sanitizer_path()
    if not os.path.exists(sanitizer):
        pytest.skip("compute-sanitizer not found")
    # without the caching allocator every tensor is its own allocation: out-of-bounds accesses
    # into a neighbour's memory are not hidden
    env = dict(os.environ, PYTORCH_NO_CUDA_MEMORY_CACHING="1",
               PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), HERE]))
    # Only tlstm's kernels are checked, except by initcheck: it tracks which bytes were written
    # only in the kernels it instruments, so it must see the cuBLAS GEMMs that write the gates.
    only_ours = [] if tool == "initcheck" else ["--kernel-name", "kns=tlstm"]
    proc = subprocess.run(
        [sanitizer, "--tool", tool, "--error-exitcode", "9", "--print-limit", "20", *only_ours,
         sys.executable, os.path.join(HERE, "cuda_sanitizer_workload.py")],
        capture_output=True, text=True, env=env, timeout=1800)
    text = proc.stdout + proc.stderr
    report = text[:6000] + "\n...\n" + text[-2000:]
    assert proc.returncode == 0 and "sanitizer workload done" in proc.stdout, report
    # racecheck sums up as "RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)"
    assert ("ERROR SUMMARY: 0 errors" in text
            or "SUMMARY: 0 hazards displayed (0 errors, 0 warnings)" in text), report
