"""The CPU kernels' instruction set is the running CPU's (csrc/cpu/cpu_capability.h), and every
instruction set this CPU has gives results within the contract: the parity tests of both cells
against the float64 reference, rerun with TLSTM_CPU_CAPABILITY lowered to each of them."""
import os
import subprocess
import sys

import pytest
import torch

import tlstm  # noqa: F401  (registers the ops)

ORDER = ["default", "avx2", "avx512"]
TESTS = os.path.dirname(os.path.abspath(__file__))


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []


def _expected_capability():
    flags = _cpu_flags()
    if all(f in flags for f in ("avx512f", "avx512vl", "avx512bw", "avx512dq")):
        return "avx512"
    if all(f in flags for f in ("avx2", "fma")):
        return "avx2"
    return "default"


def _run(code_or_args, capability):
    env = dict(os.environ, TLSTM_CPU_CAPABILITY=capability)
    return subprocess.run([sys.executable, *code_or_args], env=env, cwd=os.path.dirname(TESTS),
                          capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="reads /proc/cpuinfo")
def test_the_running_cpus_capability_is_chosen():
    if os.environ.get("TLSTM_CPU_CAPABILITY"):
        pytest.skip("TLSTM_CPU_CAPABILITY is set")
    assert torch.ops.tlstm.cpu_capability() == _expected_capability()


def _available():
    if not os.path.exists("/proc/cpuinfo"):
        return ["default"]
    return ORDER[: ORDER.index(_expected_capability()) + 1]


@pytest.mark.parametrize("capability", ORDER)
def test_parity_with_each_instruction_set(capability):
    """Both cells' parity tests (float64 and float32 against the float64 reference, one and two
    threads, sizes that are not multiples of any panel width) with the kernels of `capability`."""
    if capability not in _available():
        pytest.skip(f"this CPU has no {capability}")
    check = _run(["-c", "import torch, tlstm; print(torch.ops.tlstm.cpu_capability())"],
                 capability)
    assert check.returncode == 0, check.stderr[-2000:]
    assert check.stdout.strip() == capability
    run = _run(["-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                os.path.join(TESTS, "test_peephole_vs_reference.py"),
                os.path.join(TESTS, "test_tensorized_vs_reference.py"),
                "-k", "small or threaded or odd or configs or depth"], capability)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout


def test_unknown_capability_is_a_clear_error():
    run = _run(["-c", "import torch, tlstm; tlstm.PeepholeLSTM(3, 4)(torch.randn(2, 1, 3))"],
               "avx9000")
    assert run.returncode != 0
    assert "TLSTM_CPU_CAPABILITY must be one of default, avx2, avx512, got 'avx9000'" in run.stderr


def test_more_than_the_cpu_has_is_a_clear_error():
    available = _available()
    if available[-1] == ORDER[-1]:
        pytest.skip("this CPU has every instruction set the kernels know")
    beyond = ORDER[len(available)]
    run = _run(["-c", "import torch, tlstm; tlstm.PeepholeLSTM(3, 4)(torch.randn(2, 1, 3))"],
               beyond)
    assert run.returncode != 0
    assert f"TLSTM_CPU_CAPABILITY={beyond} asks for more than this CPU has" in run.stderr
