"""The CUDA kernels of both cells, run on the CPU through the thread-per-CUDA-thread emulation
of tools/emulate_cuda (the --quick set of each check), so that a machine without a GPU (CI)
still runs their code: the persistent peephole kernels against those of 46d7fc7, which passed
the CUDA tests on an H100 (a fixture under tools/emulate_cuda/fixtures); the tLSTM's persistent
kernels against its step kernels; and both tLSTM recurrences, its step kernels on the 3-D cell
and the persistent peephole kernels against the registered CPU ops, within docs/parity.md's
bound; and the kernels serialized in two thread orders, which must agree bitwise (a race
check). And the host decisions of the persistent launch (csrc/cuda/persistent_launch.cuh)
against a scripted CUDA runtime, since a GPU cannot be made to refuse a launch on demand. The
drivers include the device headers of csrc/cuda as the extension compiles them. Skipped where
there is no g++."""
import io
import os
import pathlib
import shutil
import subprocess
import sys
from contextlib import redirect_stdout

import pytest

TOOLS = pathlib.Path(__file__).resolve().parent.parent / "tools" / "emulate_cuda"

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")


def tools_module(name):
    """A module of tools/emulate_cuda, imported with that folder on the path (its modules
    import each other by name)."""
    sys.path.insert(0, str(TOOLS))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(TOOLS))


def run_check(module_name, *argv):
    out = io.StringIO()
    with redirect_stdout(out):
        code = tools_module(module_name).main(["--quick", *argv])
    return code, out.getvalue()


def test_persistent_peephole_kernels_match_the_gpu_tested_ones():
    code, report = run_check("compare_persistent_kernels")
    assert code == 0 and report.count("ok  ") == 2, report


def test_persistent_tensorized_kernels_match_the_step_kernels():
    code, report = run_check("compare_tensorized_kernels")
    assert code == 0 and report.count("ok  ") == 2, report


def test_cuda_kernels_match_the_cpu_op():
    # the tLSTM's two recurrences share their row code: only an independent result can catch a
    # mistake in it (a planted one in the forget gate's derivative passes the check above, not
    # this); the peephole's persistent kernels too, without the git history
    # also: reverse inference with even T (slots by step, not by time); 320 work items with
    # several staged chunks; float16 and bfloat16 over long reductions against the op in float64
    # (a shift of the cell states, kept in float, shows sums kept in the half type); and large
    # logits and pre-activations in float32, where the device's exp overflows (the emulation
    # compiles fast_math.h's device branch); and the 3-D cell's step kernels (the P x P plane,
    # 25 memory taps in float32), which CUDA runs for tensor_dim=3
    code, report = run_check("compare_with_cpu_op")
    assert code == 0 and report.count("ok  ") == 12, report


def test_kernels_have_no_race_between_barriers():
    # the kernels serialized, lowest thread index first and highest first, between barriers:
    # a read or write of an element another thread writes, with no barrier between, gives
    # different outputs (a barrier dropped from the block matmul, or either cell's grid-wide
    # barrier, fails it); and a partial last block of the persistent tLSTM's backward (a dropped
    # bounds check writes into another block's columns and past the buffer's end); the 3-D
    # cell's step kernels with 25 memory taps; the schedules are fixed, so what they catch they
    # catch every run; compute-sanitizer's racecheck on a GPU is the real check
    code, report = run_check("race_check")
    assert code == 0 and report.count("ok  ") == 5, report


def test_persistent_launch_falls_back_or_fails_clearly(tmp_path):
    # sizing, an unknown TLSTM_CUDA_RECURRENCE, no co-residency, and a launch the driver refuses
    # at run time: false (the steps run) by default, a clear error where persistent is forced
    exe = tools_module("emulation").compile_driver("launch_driver.cpp", tmp_path / "launch_driver",
                         [TOOLS / "mock_cuda_runtime"], link_c10=True)
    env = {k: v for k, v in os.environ.items() if k != "TLSTM_CUDA_RECURRENCE"}
    result = subprocess.run([str(exe)], capture_output=True, text=True, env=env)
    assert result.returncode == 0 and "of 20 checks passed" in result.stdout, result.stdout
