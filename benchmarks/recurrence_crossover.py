"""Where the persistent recurrence (one cooperative kernel for the whole sequence) beats the
stepwise one (a GEMM and kernels per step), by size, for each cell: the data behind the
automatic choices (kPersistentMaxWork in csrc/cuda/peephole_lstm_cuda.cu;
kPersistentMaxStagedBytes and kPersistentMaxMultiplyAdds in csrc/cuda/tensorized_lstm_cuda.cu).
The peephole rows also time cuDNN's plain LSTM. GPU only; medians over interleaved repeats after a warm-up, CUDA events.

    python benchmarks/recurrence_crossover.py [--cells peephole tensorized] [--repeats 10]
        [--json PATH_OR_DIR]
"""
import argparse
import os
import statistics

import torch

from tlstm.bench import (Clock, Config, Record, build_modules, git_commit, make_workload,
                         result_path, step_function, write_results)

RECURRENCES = ("stepwise", "persistent")


def configs(cell):
    if cell == "peephole":  # T=100, I = H
        return [Config("peephole", 100, B, H, H, dtype=dtype) for dtype in ("float32", "bfloat16")
                for H in (256, 512, 1024) for B in (8, 16, 32, 64, 128, 256)]
    return [Config("tensorized", 256, B, M, M, L=L, K=3, dtype=dtype)  # T=256, I = M
            for dtype in ("float32", "bfloat16") for M in (256, 512) for B in (16, 64, 128)
            for L in (1, 4, 8, 16)]


def time_config(cfg, clock, repeats, warmup=2):
    """Records of the fused module under each recurrence (and cuDNN for the peephole cell),
    timed interleaved; a recurrence that cannot run this size has no record."""
    impls = ["fused", "cudnn"] if cfg.cell == "peephole" else ["fused"]
    modules = build_modules(cfg, "cuda", impls)
    work = make_workload(cfg, "cuda", modules)
    records = []
    for direction in ("fwd", "fwdbwd"):
        runs = {}
        for recurrence in RECURRENCES:
            os.environ["TLSTM_CUDA_RECURRENCE"] = recurrence
            run = step_function(modules["fused"], "fused", work, direction)
            try:
                for _ in range(warmup):
                    run()
            except RuntimeError:  # forced persistent where it cannot run
                continue
            runs[f"fused-{recurrence}"] = (recurrence, run)
        if "cudnn" in modules:
            runs["cudnn"] = (None, step_function(modules["cudnn"], "cudnn", work, direction))
            for _ in range(warmup):
                runs["cudnn"][1]()
        recs = {name: Record(cfg, name, direction) for name in runs}
        for _ in range(repeats):
            for name, (recurrence, run) in runs.items():
                if recurrence is None:
                    os.environ.pop("TLSTM_CUDA_RECURRENCE", None)
                else:
                    os.environ["TLSTM_CUDA_RECURRENCE"] = recurrence
                recs[name].times.append(clock(run))
        os.environ.pop("TLSTM_CUDA_RECURRENCE", None)
        records += recs.values()
    return records


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", nargs="+", default=["peephole", "tensorized"],
                        choices=["peephole", "tensorized"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", help="result file, or a directory for the default name")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    clock = Clock("cuda")
    commit = git_commit()
    records = []
    print(f"median ms of {args.repeats}; '-' where the persistent kernel cannot run")
    print(f"{'config':<58} {'dir':<7} {'stepwise':>9} {'persistent':>10} {'cudnn':>8} "
          f"{'persistent/stepwise':>19}")
    for cell in args.cells:
        for cfg in configs(cell):
            recs = time_config(cfg, clock, args.repeats)
            records += recs
            for direction in ("fwd", "fwdbwd"):
                ms = {r.impl: statistics.median(r.times) for r in recs if r.direction == direction}
                step, pers, cudnn = (ms.get(k) for k in
                                     ("fused-stepwise", "fused-persistent", "cudnn"))
                cells = [f"{v:>{w}.2f}" if v is not None else f"{'-':>{w}}"
                         for v, w in ((step, 9), (pers, 10), (cudnn, 8))]
                ratio = f"{pers / step:>19.2f}" if pers and step else f"{'-':>19}"
                print(f"{cfg.label():<58} {direction:<7} {' '.join(cells)} {ratio}", flush=True)
            if args.json:  # rewritten after every configuration: a run cut short keeps its data
                name = result_path(args.json, "cuda", commit)
                if os.path.isdir(args.json):
                    name = name[:-len(".json")] + "-crossover.json"
                write_results(name, "cuda", commit, [], records)


if __name__ == "__main__":
    main()
