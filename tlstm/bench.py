"""``python -m tlstm bench``: the parity report and the wall-clock benchmark.

1. Parity: the fused modules against the float64 reference on fresh random data, for outputs,
   final states and every gradient, with the bounds of SPEC.md section 3.
2. Speed: each configuration and direction times every implementation in the same process,
   interleaved round after round, after a warm-up; it reports medians and the ratio to the
   baseline (nn.LSTM / cuDNN). CPU times come from time.perf_counter around synchronous calls,
   GPU times from CUDA events.

The result file follows ../shared/BENCHMARKS.md (see ``--json``).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

import torch
from torch import nn

import tlstm

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
          "float16": torch.float16}


# ---- configurations ------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    cell: str  # "peephole"
    T: int
    B: int
    I: int  # noqa: E741
    H: int
    layers: int = 1
    L: int | None = None
    K: int | None = None
    dtype: str = "float32"
    tf32: bool = False

    def label(self) -> str:
        depth = f" L={self.L} K={self.K}" if self.L is not None else ""
        layers = f" layers={self.layers}" if self.layers != 1 else ""
        tf32 = " tf32" if self.tf32 else ""
        return (f"{self.cell} T={self.T} B={self.B} I={self.I} H={self.H}{layers}{depth} "
                f"{self.dtype}{tf32}")


def peephole_configs(device: str, quick: bool) -> list[Config]:
    if device == "cpu":
        # The first is the foundation issue's target: T=100, B=32, I=H=256, float32.
        shapes = [(100, 32, 256, 256)] if quick else [
            (100, 32, 256, 256), (100, 8, 256, 256), (100, 64, 128, 128), (50, 32, 512, 512),
            (200, 4, 64, 64)]
        return [Config("peephole", T, B, I, H) for T, B, I, H in shapes]
    Ts = (100,) if quick else (100, 1000)
    Bs = (8, 64) if quick else (1, 8, 64, 256)
    Hs = (512,) if quick else (256, 512, 1024)
    configs = []
    for dtype, tf32 in (("float32", False), ("float32", True), ("bfloat16", False)):
        if quick and tf32:
            continue
        configs += [Config("peephole", T, B, H, H, dtype=dtype, tf32=tf32)
                    for T in Ts for B in Bs for H in Hs]
    return configs


# ---- implementations -----------------------------------------------------------------------


def lstm_baseline_name(device: str) -> str:
    return "cudnn" if device == "cuda" else "nn.LSTM"


def build_peephole(cfg: Config, device: str, impls: list[str]) -> dict[str, nn.Module]:
    """Modules with the same weights: the nn.LSTM ones are those of the peephole modules."""
    dtype = DTYPES[cfg.dtype]
    fused = tlstm.PeepholeLSTM(cfg.I, cfg.H, num_layers=cfg.layers, device=device, dtype=dtype)
    modules: dict[str, nn.Module] = {}
    for name in impls:
        if name == "fused":
            modules[name] = fused
        elif name in ("reference", "compiled_reference"):
            ref = tlstm.reference.PeepholeLSTM(cfg.I, cfg.H, num_layers=cfg.layers,
                                               device=device, dtype=dtype)
            ref.load_state_dict(fused.state_dict())
            modules[name] = torch.compile(ref) if name == "compiled_reference" else ref
        elif name in ("cudnn", "nn.LSTM"):
            lstm = nn.LSTM(cfg.I, cfg.H, num_layers=cfg.layers, device=device, dtype=dtype)
            lstm.load_state_dict(fused.state_dict(), strict=False)
            modules[name] = lstm
    return modules


# ---- timing --------------------------------------------------------------------------------


class Clock:
    """Milliseconds of one call: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"

    def __call__(self, fn) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3


@dataclass
class Workload:
    """Inputs of one configuration; several sets, rotated, so that none sits in cache."""

    inputs: list
    states: list
    upstream: list
    k: int = 0

    def next(self):
        self.k = (self.k + 1) % len(self.inputs)
        return self.inputs[self.k], self.states[self.k], self.upstream[self.k]


def make_workload(cfg: Config, device: str, sets: int = 3) -> Workload:
    dtype = DTYPES[cfg.dtype]
    g = torch.Generator(device="cpu").manual_seed(1234)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    states = []
    for _ in range(sets):
        n = cfg.layers
        states.append((rand(n, cfg.B, cfg.H), rand(n, cfg.B, cfg.H)))
    return Workload(
        inputs=[rand(cfg.T, cfg.B, cfg.I) for _ in range(sets)],
        states=states,
        upstream=[rand(cfg.T, cfg.B, cfg.H) for _ in range(sets)],
    )


def step_function(module: nn.Module, work: Workload, direction: str):
    if direction == "fwd":
        def run():
            x, hx, _ = work.next()
            with torch.no_grad():
                module(x, hx)
        return run

    params = list(module.parameters())

    def run_fwdbwd():
        x, (h0, c0), upstream = work.next()
        x = x.detach().requires_grad_(True)
        h0 = h0.detach().requires_grad_(True)
        c0 = c0.detach().requires_grad_(True)
        for p in params:
            p.grad = None
        out, _ = module(x, (h0, c0))
        out.backward(upstream)
    return run_fwdbwd


@dataclass
class Record:
    cfg: Config
    impl: str
    direction: str
    times: list = field(default_factory=list)

    def to_json(self) -> dict:
        c = self.cfg
        return {
            "cell": c.cell, "impl": self.impl, "direction": self.direction, "dtype": c.dtype,
            "T": c.T, "B": c.B, "I": c.I, "H": c.H, "layers": c.layers, "L": c.L, "K": c.K,
            "ms_median": round(statistics.median(self.times), 4),
            "ms_min": round(min(self.times), 4), "ms_max": round(max(self.times), 4),
            "repeats": len(self.times),
        }


class Progress:
    """A progress bar on stderr (tqdm's look, no dependency)."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.done, self.enabled = max(total, 1), 0, enabled
        self.start = time.perf_counter()

    def update(self, what: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        frac = self.done / self.total
        bar = "#" * int(30 * frac)
        elapsed = time.perf_counter() - self.start
        eta = elapsed / frac - elapsed
        sys.stderr.write(f"\r[{bar:<30}] {self.done}/{self.total} {elapsed:5.0f}s "
                         f"eta {eta:4.0f}s  {what[:60]:<60}")
        if self.done == self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


# torch.compile unrolls the reference's Python loop over the steps: beyond this it compiles for
# minutes, so longer sequences time the eager reference only.
COMPILE_MAX_STEPS = 200


def time_config(cfg: Config, device: str, impls: list[str], directions: list[str],
                repeats: int, warmup: int, progress: Progress) -> list[Record]:
    if cfg.T > COMPILE_MAX_STEPS:
        impls = [name for name in impls if name != "compiled_reference"]
    torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
    torch.backends.cudnn.allow_tf32 = cfg.tf32
    modules = build_peephole(cfg, device, impls)
    work = make_workload(cfg, device)
    clock = Clock(device)
    records = []
    for direction in directions:
        runs = {name: step_function(m, work, direction) for name, m in modules.items()}
        for run in runs.values():
            for _ in range(warmup):
                run()
        recs = {name: Record(cfg, name, direction) for name in runs}
        for _ in range(repeats):  # interleaved: every implementation once per round
            for name, run in runs.items():
                recs[name].times.append(clock(run))
        records += recs.values()
        progress.update(f"{cfg.label()} {direction}")
    return records


# ---- parity --------------------------------------------------------------------------------


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    denom = b.norm().item()
    err = (a - b).norm().item() / (denom if denom > 0 else 1.0)
    return float("nan") if err != err else err


def peephole_parity(device: str) -> list[dict]:
    """Fused (float64 and float32) against the float64 reference; max error over all outputs."""
    torch.manual_seed(0)
    cases = [dict(num_layers=2, bidirectional=True, proj_size=0),
             dict(num_layers=1, bidirectional=False, proj_size=4)]
    T, B, I, H = 12, 5, 7, 9
    rows = []
    for kwargs in cases:
        ref = tlstm.reference.PeepholeLSTM(I, H, **kwargs, dtype=torch.float64)
        lengths = torch.randint(1, T + 1, (B,))
        x = torch.randn(T, B, I, dtype=torch.float64)
        up = None
        results = {}
        for name, dtype in (("reference", torch.float64), ("fused float64", torch.float64),
                            ("fused float32", torch.float32)):
            dev = "cpu" if name == "reference" else device
            module = ref if name == "reference" else tlstm.PeepholeLSTM(I, H, **kwargs).to(dev, dtype)
            if module is not ref:
                module.load_state_dict(ref.state_dict())
            xi = x.to(dev, dtype).requires_grad_(True)
            packed = torch.nn.utils.rnn.pack_padded_sequence(xi, lengths, enforce_sorted=False)
            out, (h, c) = module(packed)
            if up is None:
                g = torch.Generator().manual_seed(1)
                up = [torch.randn(t.shape, generator=g, dtype=torch.float64)
                      for t in (out.data, h, c)]
            loss = sum((t * u.to(dev, dtype)).sum() for t, u in zip((out.data, h, c), up))
            grads = torch.autograd.grad(loss, [xi] + list(module.parameters()))
            results[name] = [t.detach().cpu() for t in (out.data, h, c, *grads)]
        for name, bound in (("fused float64", 1e-10), ("fused float32", 1e-5)):
            err = max(rel_err(a, b) for a, b in zip(results[name], results["reference"]))
            rows.append({"cell": "peephole", "case": str(kwargs), "impl": name,
                         "device": device, "max_rel_err": err, "bound": bound,
                         "ok": err == err and err <= bound})
    return rows


# ---- report --------------------------------------------------------------------------------


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {torch.get_num_threads()} threads"


def git_commit() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True).stdout.strip()
        # uncommitted changes to the code that is measured, new files included
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "csrc", "tlstm", "setup.py"],
                               cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def print_table(records: list[Record], baseline: str) -> None:
    by_key: dict = {}
    for r in records:
        by_key.setdefault((r.cfg, r.direction), {})[r.impl] = r
    header = f"{'configuration':<52} {'dir':<7} {'impl':<19} {'median ms':>10} {'min':>9} {'vs ' + baseline:>12}"
    print(header)
    print("-" * len(header))
    for (cfg, direction), recs in by_key.items():
        base = recs.get(baseline)
        for impl, r in recs.items():
            med = statistics.median(r.times)
            ratio = f"{med / statistics.median(base.times):.2f}x" if base else ""
            print(f"{cfg.label():<52} {direction:<7} {impl:<19} {med:>10.2f} "
                  f"{min(r.times):>9.2f} {ratio:>12}")


def result_path(path: str, device: str, commit: str) -> str:
    if not os.path.isdir(path):
        return path
    slug = "".join(ch if ch.isalnum() else "-" for ch in device_name(device).lower())
    slug = "-".join(part for part in slug.split("-") if part)
    day = datetime.date.today().strftime("%Y%m%d")
    return os.path.join(path, f"{slug}-{day}-{commit[:7]}.json")


def run(args: argparse.Namespace) -> int:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"tlstm {tlstm.__version__}, torch {torch.__version__}, device {device_name(device)}")

    print("\n== parity against the float64 reference (SPEC.md section 3) ==")
    parity = peephole_parity(device)
    for row in parity:
        status = "ok" if row["ok"] else "FAIL"
        print(f"  {row['cell']:<9} {row['impl']:<14} {row['case']:<55} "
              f"max rel err {row['max_rel_err']:.2e} (bound {row['bound']:.0e}) {status}")

    baseline = lstm_baseline_name(device)
    impls = ["fused", "reference", baseline]
    if args.compile or (device == "cuda" and not args.no_compile):
        impls.append("compiled_reference")
    configs = peephole_configs(device, args.quick)
    directions = ["fwd", "fwdbwd"]
    repeats = args.repeats or (5 if args.quick else 15)
    print(f"\n== wall clock: median of {repeats} interleaved repeats after {args.warmup} warm-up "
          f"runs, {'CUDA events' if device == 'cuda' else 'perf_counter'}, "
          f"{torch.get_num_threads()} CPU threads ==")
    progress = Progress(len(configs) * len(directions), enabled=not args.no_progress)
    records = []
    for cfg in configs:
        records += time_config(cfg, device, impls, directions, repeats, args.warmup, progress)
    print_table(records, baseline)

    if args.json:
        commit = git_commit()
        path = result_path(args.json, device, commit)
        result = {
            "device": device_name(device),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": str(torch.backends.cudnn.version()) if device == "cuda" else None,
            "commit": commit,
            "date": datetime.date.today().isoformat(),
            "tf32": any(r.cfg.tf32 for r in records),
            "threads": torch.get_num_threads(),
            "parity": parity,
            "records": [dict(r.to_json(), tf32=r.cfg.tf32) if r.cfg.tf32 else r.to_json()
                        for r in records],
        }
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(result, f, indent=1)
        print(f"\nwrote {path}")
    ok = all(row["ok"] for row in parity)
    if not ok:
        print("\nPARITY FAILED", file=sys.stderr)
    return 0 if ok else 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a short run (under a minute on a CPU)")
    parser.add_argument("--json", metavar="PATH", help="write the results (a directory: "
                        "<device>-<date>-<commit>.json inside it)")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available")
    parser.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--repeats", type=int, help="timed repeats per implementation")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    parser.add_argument("--compile", action="store_true",
                        help="also time the reference under torch.compile (default on a GPU, "
                        f"for T <= {COMPILE_MAX_STEPS})")
    parser.add_argument("--no-compile", action="store_true",
                        help="never time the compiled reference")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
