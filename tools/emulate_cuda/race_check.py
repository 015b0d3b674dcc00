"""A race and memory check of the CUDA kernels without a GPU, in the spirit of
compute-sanitizer's racecheck, synccheck and memcheck: the tLSTM's step and persistent kernels
(on the 3-D cell too, the step kernels) and the peephole LSTM's persistent kernels, of the
working tree, run through the emulation (cuda_host_shim.h) serialized, one CUDA thread at a
time from barrier to barrier, once with the lowest thread index first and once with the
highest first (EMU_SCHEDULE=ascending, descending). Between two barriers every pair of
threads then runs in both orders, so where one thread writes an element (shared or global)
that another reads or writes with no barrier between them, the two schedules see different
values: every output must be bitwise the same in both (the kernels use no atomics and add in a
fixed order). A barrier that some thread never
reaches ends the run with an error. The drivers are built with AddressSanitizer and UBSan: an
access past a buffer's ends, or past the end of a block's shared memory, ends the run.

What it cannot see: a race whose two values happen to be equal, or one in a shape not run here;
an access that strays from one region of a block's shared memory into another; and it knows
nothing of the GPU's memory model beyond barriers (the kernels communicate only through
__syncthreads, __syncwarp, the shuffles and grid.sync). compute-sanitizer on a GPU remains the
real check.

Usage: python tools/emulate_cuda/race_check.py [--quick]. tests/test_cuda_emulation.py runs the
--quick set, so CI without a GPU runs it too."""
import argparse
import pathlib
import sys
import tempfile

from compare_persistent_kernels import CONFIGS as PEEPHOLE_CONFIGS
from compare_persistent_kernels import build_current_peephole_driver
from compare_tensorized_kernels import CONFIGS as TENSORIZED_CONFIGS
from compare_tensorized_kernels import build_tensorized_driver
from emulation import compare_configs, run_outputs

SCHEDULES = [{"EMU_SCHEDULE": "ascending"}, {"EMU_SCHEDULE": "descending"}]
EXACT = {"double": 0.0, "float": 0.0, "half": 0.0, "bfloat16": 0.0}
# (driver, recurrence) and the comparison scripts' configurations: every flag, lengths,
# streaming, several staged chunks, odd sizes, more tiles than threads, the half types
CASES = [
    ("tensorized", "stepwise", TENSORIZED_CONFIGS[0]),
    ("tensorized", "persistent", TENSORIZED_CONFIGS[0]),
    ("tensorized", "persistent", TENSORIZED_CONFIGS[2]),
    ("tensorized", "persistent", TENSORIZED_CONFIGS[4]),
    ("tensorized", "stepwise", TENSORIZED_CONFIGS[8]),
    ("tensorized", "persistent", TENSORIZED_CONFIGS[8]),
    ("tensorized", "persistent", TENSORIZED_CONFIGS[11]),
    ("peephole", None, PEEPHOLE_CONFIGS[1]),
    ("peephole", None, PEEPHOLE_CONFIGS[2]),
    ("peephole", None, PEEPHOLE_CONFIGS[6]),
    ("peephole", None, PEEPHOLE_CONFIGS[9]),
    ("peephole", None, PEEPHOLE_CONFIGS[11]),
    # the 3-D cell's step kernels (tensorized_driver.cpp's plane mode): every flag, K=5, i.e.
    # 25 memory taps, the rows' register arrays full (AddressSanitizer sees a tap past them),
    # M=33 (a warp's lanes take two rounds of channels, the second partial)
    ("tensorized", "plane", ("float", 2, 3, 33, 2, 5, 1, 1, 1, 1, 0, 1, 0, 0, 0)),
]
# persistent tLSTM (every flag), its step kernels, persistent peephole with several staged
# chunks; the persistent tLSTM with K=7, whose last backward block is partial (24 columns in
# blocks of 5): a write past its columns lands in another block's (the two orders differ) and,
# from the last row, past the buffer (AddressSanitizer); the 3-D cell's step kernels
QUICK = [CASES[1], CASES[4], CASES[8], CASES[5], CASES[12]]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="five configurations")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        peephole = build_current_peephole_driver(tmp, sanitize=True)
        tensorized = build_tensorized_driver(tmp, sanitize=True)
        failures = 0
        for driver, recurrence, config in QUICK if args.quick else CASES:
            command = [tensorized, recurrence] if driver == "tensorized" else [peephole]
            print(f"{driver} {recurrence or 'persistent'}:", end=" ")

            def run(config):
                return run_outputs([command, command], config, tmp, environments=SCHEDULES)

            try:
                failures += compare_configs([config], run, EXACT, relative=False)
            except RuntimeError as error:  # a sanitizer's report, or a barrier never reached
                print(f"FAIL {config}: {error}", flush=True)
                failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
