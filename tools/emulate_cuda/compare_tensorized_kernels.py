"""Checks the persistent tensorized LSTM CUDA kernels without a GPU: the step kernels (with host
GEMMs, one per tap that reads a hidden row, in place of cuBLAS) and the persistent kernels of
the working tree run on the CPU through a thread-per-CUDA-thread emulation (cuda_host_shim.h)
on the same random inputs, and every output must agree to rounding.
Buffers the kernels must write start at -7 and shared memory as NaN bytes, so a missed write
or a read of an unwritten element shows up. Usage:
python tools/emulate_cuda/compare_tensorized_kernels.py [--quick]. A development check; the CUDA
tests on a GPU remain the real test (tests/test_cuda_emulation.py runs the --quick set, so CI
without a GPU runs it too)."""
import argparse
import pathlib
import sys
import tempfile

from emulation import compare_configs, compile_driver, run_outputs

# The host GEMMs of the steps sum in double, each tap's rounded to the type as it adds to A
# (cuBLAS's beta = 1), the persistent kernels every tap in the op-math type, rounded once; in
# the half types that moves outputs by an ulp or two (1.3e-3 in float16, 3.1e-3 in bfloat16).
TOLERANCE = {"double": 1e-12, "float": 2e-5, "half": 2e-2, "bfloat16": 1e-1}
# dtype, T, B, M, depth, K, feedback, channel_norm, memory_conv, lengths, flush, training,
# columns per block forward / backward, staged chunk (0: the kernel's own)
CONFIGS = [
    ("double", 4, 3, 8, 3, 3, 1, 1, 1, 1, 1, 1, 8, 8, 0),     # every flag, lengths (one 0)
    ("float", 5, 2, 5, 4, 5, 1, 1, 1, 1, 0, 1, 4, 4, 0),      # K=5 (P=7), streaming
    ("double", 3, 5, 7, 4, 3, 0, 0, 0, 0, 1, 1, 8, 4, 7),     # no feedback/CN/memory conv, chunks
    ("double", 4, 2, 9, 2, 3, 1, 0, 1, 1, 1, 0, 8, 8, 0),     # inference slots
    ("double", 3, 9, 33, 3, 3, 1, 1, 1, 1, 1, 1, 32, 16, 13),  # M=33, several chunks
    ("double", 3, 3, 6, 1, 3, 1, 1, 1, 1, 1, 1, 8, 8, 0),     # depth 1 (P=1)
    ("double", 1, 4, 10, 3, 3, 1, 1, 1, 0, 0, 1, 12, 12, 0),  # T=1 without flush
    ("double", 2, 100, 4, 3, 3, 1, 0, 1, 1, 1, 1, 16, 16, 0),  # 300 tiles: two rounds of items
    ("double", 3, 2, 6, 3, 7, 0, 1, 1, 1, 1, 1, 3, 5, 0),     # K=7 without feedback, odd units
    ("double", 2, 2, 5, 2, 15, 1, 0, 1, 1, 1, 1, 5, 7, 0),    # K=15 (P=8), the CUDA maximum
    ("half", 4, 3, 8, 3, 3, 1, 1, 1, 1, 1, 1, 8, 8, 0),
    ("bfloat16", 3, 2, 12, 3, 5, 1, 0, 1, 1, 0, 1, 16, 8, 9),
]
QUICK = [CONFIGS[0], CONFIGS[8]]  # every flag with lengths; K=7 without feedback, odd units


def build_tensorized_driver(workdir, sanitize=False):
    """tensorized_driver.cpp with the working tree's kernels, built in workdir (sanitize: see
    emulation.compile_driver)."""
    return compile_driver("tensorized_driver.cpp", workdir / "emulate_tensorized",
                          sanitize=sanitize)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="two configurations")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        exe = build_tensorized_driver(tmp)

        def run(config):
            return run_outputs([[exe, "stepwise"], [exe, "persistent"]], config, tmp)

        failures = compare_configs(QUICK if args.quick else CONFIGS, run, TOLERANCE,
                                   relative=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
