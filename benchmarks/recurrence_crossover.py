"""Where the persistent peephole recurrence beats the stepwise one (cuBLAS GEMM + kernel per
step), by batch size and width, next to cuDNN: the data behind the automatic choice
(kPersistentMaxBatch in csrc/cuda/peephole_lstm_cuda.cu). GPU only.

    python benchmarks/peephole_recurrence_crossover.py [--T 100] [--repeats 10]
"""
import argparse
import os
import statistics

import torch

from tlstm.bench import Clock, Config, build_modules, make_workload, step_function


def time_impl(run, clock, warmup, repeats):
    for _ in range(warmup):
        run()
    return statistics.median(clock(run) for _ in range(repeats))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--T", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    clock = Clock("cuda")
    print(f"T={args.T}, median ms of {args.repeats}; '-' where the persistent kernel cannot run")
    print(f"{'dtype':<9} {'H':>5} {'B':>4} {'dir':<7} {'stepwise':>9} {'persistent':>10} "
          f"{'cudnn':>7} {'best/cudnn':>10}")
    for dtype in ("float32", "bfloat16"):
        for H in (256, 512, 1024):
            for B in (8, 16, 32, 64, 128, 256):
                cfg = Config("peephole", args.T, B, H, H, dtype=dtype)
                modules = build_modules(cfg, "cuda", ["fused", "cudnn"])
                work = make_workload(cfg, "cuda", modules)
                for direction in ("fwd", "fwdbwd"):
                    times = {}
                    for recurrence in ("stepwise", "persistent"):
                        os.environ["TLSTM_CUDA_RECURRENCE"] = recurrence
                        run = step_function(modules["fused"], "fused", work, direction)
                        try:
                            times[recurrence] = time_impl(run, clock, 2, args.repeats)
                        except RuntimeError:
                            times[recurrence] = None
                    os.environ.pop("TLSTM_CUDA_RECURRENCE")
                    run = step_function(modules["cudnn"], "cudnn", work, direction)
                    cudnn = time_impl(run, clock, 2, args.repeats)
                    best = min(t for t in times.values() if t is not None)
                    pers = f"{times['persistent']:>10.2f}" if times["persistent"] else f"{'-':>10}"
                    print(f"{dtype:<9} {H:>5} {B:>4} {direction:<7} {times['stepwise']:>9.2f} "
                          f"{pers} {cudnn:>7.2f} {best / cudnn:>10.2f}")


if __name__ == "__main__":
    main()
