"""Checks the persistent peephole CUDA kernels without a GPU: the working tree's kernels
(csrc/cuda/peephole_persistent.cuh) and those of 46d7fc7, the last revision whose persistent
kernels passed the CUDA tests on a GPU (an H100), kept as fixtures/peephole_persistent_46d7fc7.cuh,
both run on the CPU through a thread-per-CUDA-thread emulation (cuda_host_shim.h), on the same
random inputs, and every output must agree to rounding. Shared memory starts as NaN bytes, so a
read of an unwritten element shows up. compare_with_cpu_op.py holds the same kernels to the CPU
op in float64 and float32; this check adds the half types and more shapes. Usage: python
tools/emulate_cuda/compare_persistent_kernels.py [--quick]. A development check; the CUDA tests
on a GPU remain the real test (tests/test_cuda_emulation.py runs the --quick set, so CI without
a GPU runs it too)."""
import argparse
import pathlib
import sys
import tempfile

from emulation import compare_configs, compile_driver, run_outputs

# Both versions sum in a different order; in the half types that moves outputs by an ulp or
# two (2^-10, 2^-7 relative), far below what a wrong index or an unwritten element gives.
TOLERANCE = {"double": 1e-12, "float": 1e-5, "half": 2e-2, "bfloat16": 1e-1}
# dtype, T, B, H, units per block, lengths, reverse, whole history (training), staged chunk
# (0: the kernel's own): blocks past H, B not a multiple of the tile, several chunks, more
# tiles than threads, one row, inference slots, half types, many slices.
CONFIGS = [
    ("float", 4, 5, 37, 8, 1, 0, 1, 0),
    ("double", 4, 5, 37, 8, 1, 1, 1, 0),
    ("double", 4, 5, 37, 8, 1, 0, 1, 7),
    ("float", 3, 1, 20, 4, 0, 0, 1, 0),
    ("double", 3, 9, 64, 16, 1, 0, 1, 0),
    ("double", 3, 40, 64, 32, 1, 1, 1, 0),
    ("double", 5, 6, 33, 8, 1, 0, 0, 5),
    ("double", 5, 6, 33, 8, 0, 1, 0, 0),
    ("half", 4, 5, 37, 8, 1, 0, 1, 0),
    ("bfloat16", 4, 3, 21, 4, 1, 1, 1, 9),
    ("double", 2, 2, 128, 4, 0, 0, 1, 0),
    ("double", 2, 40, 64, 32, 1, 0, 1, 7),
]
QUICK = [CONFIGS[1], CONFIGS[8]]  # every output (lengths, reverse, training), and float16


def build_current_peephole_driver(workdir, sanitize=False):
    """persistent_peephole_driver.cpp with the working tree's kernels, built in workdir
    (sanitize: see emulation.compile_driver)."""
    return compile_driver("persistent_peephole_driver.cpp", workdir / "emulate_current",
                          std="c++17", sanitize=sanitize)


def build_reference_peephole_driver(workdir):
    """persistent_peephole_driver.cpp with the kernels of 46d7fc7 (the fixture)."""
    return compile_driver("persistent_peephole_driver.cpp", workdir / "emulate_reference",
                          defines=["-DREFERENCE_KERNEL"], std="c++17")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="two configurations")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        exes = {"reference": build_reference_peephole_driver(tmp),
                "current": build_current_peephole_driver(tmp)}

        def run(config):
            return run_outputs([[exes["reference"]], [exes["current"]]], config, tmp)

        failures = compare_configs(QUICK if args.quick else CONFIGS, run, TOLERANCE,
                                   relative=False)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
