"""``python -m tlstm bench``: the parity report and the wall-clock benchmark.

1. Parity: the fused modules against the float64 reference on fresh random data, for outputs,
   final states and every gradient, with the bounds of docs/parity.md.
2. Speed: each configuration and direction times every implementation in the same process,
   interleaved round after round, after a warm-up; it reports medians and the ratio to the
   baseline (nn.LSTM / cuDNN). CPU times come from time.perf_counter around synchronous calls,
   GPU times from CUDA events.

The result file follows benchmarks/README.md ("Result files") (see ``--json``).
"""
from __future__ import annotations

import argparse
import ctypes
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
from tlstm.parity import rel_err
from tlstm.tensorized_lstm_base import TensorizedLSTMBase

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
          "float16": torch.float16}


# ---- configurations ------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    cell: str  # "peephole", "tensorized" or "tensorized_plain" (no channel norm, memory conv)
    T: int
    B: int
    I: int  # noqa: E741
    H: int
    layers: int = 1
    L: int | None = None
    K: int | None = None
    dtype: str = "float32"
    tf32: bool = False
    tensor_dim: int = 2  # the tLSTM's: 3 for the P x P x M state

    def label(self) -> str:
        depth = f" L={self.L} K={self.K}" if self.L is not None else ""  # H is M for the tLSTM
        if self.tensor_dim != 2:
            depth += f" tensor_dim={self.tensor_dim}"
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


def tensorized_configs(device: str, quick: bool) -> list[Config]:
    """Time against depth. CPU: the tLSTM issue's target, T=100, B=16, M=128, K=3."""
    if device == "cpu":
        # like for like first: at depth 1 without channel norm and memory convolution the tLSTM
        # is an LSTM on x~, and should cost about what nn.LSTM costs
        # and the 3-D tLSTM's target: T=100, B=16, M=64 at depth 4
        return [Config("tensorized_plain", 100, 16, 128, 128, L=1, K=3)] + [
            Config("tensorized", 100, 16, 128, 128, L=L, K=3)
            for L in ((1, 4) if quick else (1, 2, 4, 8))] + [
            Config("tensorized", 100, 16, 64, 64, L=L, K=3, tensor_dim=3)
            for L in ((4,) if quick else (1, 2, 4))]
    Ls = (1, 4, 8) if quick else (1, 2, 4, 8, 16)
    Ms = (256,) if quick else (256, 512)
    Bs = (16,) if quick else (16, 128)
    dtypes = ("float32",) if quick else ("float32", "bfloat16")
    planes = [Config("tensorized", 256, 16, 128, 128, L=L, K=3, tensor_dim=3)
              for L in ((1, 8) if quick else (1, 2, 4, 8))]
    return [Config("tensorized", 256, B, M, M, L=L, K=3, dtype=dtype)
            for dtype in dtypes for M in Ms for B in Bs for L in Ls] + planes


# ---- implementations -----------------------------------------------------------------------


def lstm_baseline_name(device: str) -> str:
    return "cudnn" if device == "cuda" else "nn.LSTM"


def build_modules(cfg: Config, device: str, impls: list[str]) -> dict[str, nn.Module]:
    """Modules with the same weights (where they have the same parameters)."""
    dtype = DTYPES[cfg.dtype]
    factory = {"device": device, "dtype": dtype}
    if cfg.cell == "peephole":
        def make(cls):
            return cls(cfg.I, cfg.H, num_layers=cfg.layers, **factory)
        fused, reference_cls = make(tlstm.PeepholeLSTM), tlstm.reference.PeepholeLSTM
        baseline_layers = cfg.layers
    else:
        plain = dict(channel_norm=False, memory_conv=False) if cfg.cell == "tensorized_plain" else {}

        def make(cls):
            return cls(cfg.I, cfg.H, depth=cfg.L, kernel_size=cfg.K, tensor_dim=cfg.tensor_dim,
                       **plain, **factory)
        fused, reference_cls = make(tlstm.TensorizedLSTM), tlstm.reference.TensorizedLSTM
        baseline_layers = cfg.L  # the stacked LSTM of the same width and depth
    modules: dict[str, nn.Module] = {}
    for name in impls:
        if name == "fused":
            modules[name] = fused
        elif name in ("reference", "compiled_reference"):
            ref = make(reference_cls)
            ref.load_state_dict(fused.state_dict())
            modules[name] = torch.compile(ref) if name == "compiled_reference" else ref
        elif name in ("cudnn", "nn.LSTM"):
            lstm = nn.LSTM(cfg.I, cfg.H, num_layers=baseline_layers, **factory)
            if cfg.cell == "peephole":
                lstm.load_state_dict(fused.state_dict(), strict=False)
            lstm.flatten_parameters()  # else cuDNN compacts the weights at every call
            modules[name] = lstm
    return modules


def initial_state(module: nn.Module, batch: int, rand) -> tuple:
    """(h0, c0) of the shapes the module takes: [layers, B, H] for nn.LSTM and the peephole
    LSTM, [B, P, M] (or [B, P, P, M]) for the tensorized LSTM."""
    module = getattr(module, "_orig_mod", module)  # a compiled module
    if isinstance(module, TensorizedLSTMBase):  # fused or reference tLSTM
        shape = (batch, *module.state_shape)
        return rand(*shape), rand(*shape)
    layers = module.num_layers * (2 if module.bidirectional else 1)
    return rand(layers, batch, module.hidden_size), rand(layers, batch, module.hidden_size)


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
    """Inputs of one configuration, several sets rotated so that none sits in cache; each
    implementation gets initial states of its own shapes."""

    inputs: list
    upstream: list
    states: dict
    k: int = 0

    def next(self, impl: str):
        self.k = (self.k + 1) % len(self.inputs)
        return self.inputs[self.k], self.states[impl][self.k], self.upstream[self.k]


def make_workload(cfg: Config, device: str, modules: dict, sets: int = 3) -> Workload:
    dtype = DTYPES[cfg.dtype]
    g = torch.Generator(device="cpu").manual_seed(1234)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    return Workload(
        inputs=[rand(cfg.T, cfg.B, cfg.I) for _ in range(sets)],
        upstream=[rand(cfg.T, cfg.B, cfg.H) for _ in range(sets)],
        states={name: [initial_state(m, cfg.B, rand) for _ in range(sets)]
                for name, m in modules.items()},
    )


def step_function(module: nn.Module, impl: str, work: Workload, direction: str):
    if direction == "fwd":
        def run():
            x, state, _ = work.next(impl)
            with torch.no_grad():
                module(x, state)
        return run

    params = list(module.parameters())

    def run_fwdbwd():
        x, (h0, c0), upstream = work.next(impl)
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
        cell, layers, L, K = c.cell, c.layers, c.L, c.K
        if c.cell.startswith("tensorized") and self.impl in ("cudnn", "nn.LSTM"):
            cell, layers, L, K = "lstm", c.L, None, None  # the stacked LSTM: layers is L
        record = {
            "cell": cell, "impl": self.impl, "direction": self.direction, "dtype": c.dtype,
            "T": c.T, "B": c.B, "I": c.I, "H": c.H, "layers": layers, "L": L, "K": K,
            "ms_median": round(statistics.median(self.times), 4),
            "ms_min": round(min(self.times), 4), "ms_max": round(max(self.times), 4),
            "repeats": len(self.times),
        }
        if cell.startswith("tensorized"):
            record["tensor_dim"] = c.tensor_dim
        return record


def work_estimate(cfg: Config, direction: str) -> float:
    """The relative cost of timing `cfg` in `direction`, for the progress bar's ETA: the
    multiply-adds of a forward pass, three times that with the backward. (Counting every
    configuration alike made the first ETA of a --quick run 56 s for 264 s.)"""
    if cfg.cell == "peephole":
        macs = cfg.T * cfg.B * 4 * cfg.H * (cfg.I + cfg.H) * cfg.layers
    else:
        axes = cfg.tensor_dim - 1
        locations = ((cfg.L - 1) * (cfg.K - 1) // 2 + 1) ** axes
        macs = ((cfg.T + cfg.L - 1) * cfg.B * locations * cfg.K ** axes * cfg.H * 4 * cfg.H
                + cfg.T * cfg.B * cfg.I * cfg.H)
    return float(macs) * (3 if direction == "fwdbwd" else 1)


class Progress:
    """A progress bar on stderr (tqdm's look, no dependency), its ETA from the work estimates of
    the units done and left."""

    def __init__(self, work: list[float], enabled: bool = True):
        self.units, self.count, self.enabled = len(work), 0, enabled
        self.total, self.done = max(sum(work), 1e-9), 0.0
        self.start = time.perf_counter()

    def eta(self, elapsed: float) -> float:
        return elapsed * (self.total - self.done) / self.done if self.done > 0 else float("nan")

    def update(self, what: str, work: float = 1.0) -> None:
        self.count += 1
        self.done += work
        if not self.enabled:
            return
        bar = "#" * int(30 * min(self.done / self.total, 1.0))
        elapsed = time.perf_counter() - self.start
        sys.stderr.write(f"\r[{bar:<30}] {self.count}/{self.units} {elapsed:5.0f}s "
                         f"eta {self.eta(elapsed):4.0f}s  {what[:60]:<60}")
        if self.count == self.units:
            sys.stderr.write("\n")
        sys.stderr.flush()


# torch.compile unrolls the reference's Python loop over the steps: beyond this it compiles for
# minutes, so longer sequences time the eager reference only.
COMPILE_MAX_STEPS = 200


def impls_for(cfg: Config, device: str, impls: list[str]) -> list[str]:
    """Which implementations a configuration times. On the CPU, all. On a GPU the eager
    reference launches a few dozen small kernels per step and takes seconds per configuration,
    and the compiled reference compiles for a minute or more per shape, so a GPU run (which has
    minutes) times them where the comparison is made: the eager reference at float32 without
    TF32, for the peephole LSTM at T <= 200 and for the tLSTM at B=16, M=256 (its time hardly
    depends on the depth: one batched step updates every row); the compiled reference
    at one shape of the peephole LSTM, T=100, B=64, H=512, float32."""
    if device != "cuda":
        return [n for n in impls if n != "compiled_reference" or cfg.T <= COMPILE_MAX_STEPS]
    plain_f32 = cfg.dtype == "float32" and not cfg.tf32
    keep = []
    for name in impls:
        if name == "reference":
            if not plain_f32 or (cfg.T > COMPILE_MAX_STEPS if cfg.cell == "peephole"
                                 else (cfg.B, cfg.H) != (16, 256)):
                continue
        if name == "compiled_reference":
            if not (plain_f32 and cfg.cell == "peephole" and (cfg.T, cfg.B, cfg.H) == (100, 64, 512)):
                continue
        keep.append(name)
    return keep


def time_config(cfg: Config, device: str, impls: list[str], directions: list[str],
                repeats: int, warmup: int, progress: Progress,
                budget_s: float | None = None) -> list[Record]:
    """Times each implementation `repeats` times, interleaved; with `budget_s`, an
    implementation whose timed runs of a direction add up to more than that stops after 3
    repeats or more (the eager reference on a GPU), the others go on."""
    impls = impls_for(cfg, device, impls)
    torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
    torch.backends.cudnn.allow_tf32 = cfg.tf32
    modules = build_modules(cfg, device, impls)
    work = make_workload(cfg, device, modules)
    clock = Clock(device)
    records = []
    for direction in directions:
        runs = {name: step_function(m, name, work, direction) for name, m in modules.items()}
        for run in runs.values():
            for _ in range(warmup):
                run()
        recs = {name: Record(cfg, name, direction) for name in runs}
        for _ in range(repeats):  # interleaved: every implementation once per round
            for name, run in runs.items():
                times = recs[name].times
                if budget_s is not None and len(times) >= 3 and sum(times) > budget_s * 1e3:
                    continue
                times.append(clock(run))
        records += recs.values()
        progress.update(f"{cfg.label()} {direction}", work_estimate(cfg, direction))
    return records


# ---- parity --------------------------------------------------------------------------------


# Small cases of each cell: (cell, constructor arguments); sizes T, B, I, H = 12, 5, 7, 9.
PARITY_CASES = [
    ("peephole", dict(num_layers=2, bidirectional=True)),
    ("peephole", dict(proj_size=4)),
    ("tensorized", dict(depth=4, kernel_size=3)),
    ("tensorized", dict(depth=3, kernel_size=5, feedback=False, memory_conv=True)),
    ("tensorized", dict(depth=3, kernel_size=3, tensor_dim=3)),
]


def parity_report(device: str) -> list[dict]:
    """Fused (float64 and float32) against the float64 reference, packed input with random
    lengths, random upstream gradients: the max relative error over outputs, final states and
    every gradient."""
    torch.manual_seed(0)
    T, B, I, H = 12, 5, 7, 9
    rows = []
    for cell, kwargs in PARITY_CASES:
        fused_cls, ref_cls = ((tlstm.PeepholeLSTM, tlstm.reference.PeepholeLSTM) if cell == "peephole"
                              else (tlstm.TensorizedLSTM, tlstm.reference.TensorizedLSTM))
        ref = ref_cls(I, H, **kwargs, dtype=torch.float64)
        with torch.no_grad():
            for p in ref.parameters():
                p.uniform_(-0.6, 0.6)
        lengths = torch.randint(1, T + 1, (B,))
        x = torch.randn(T, B, I, dtype=torch.float64)
        up = None
        results = {}
        for name, dtype in (("reference", torch.float64), ("fused float64", torch.float64),
                            ("fused float32", torch.float32)):
            dev = "cpu" if name == "reference" else device
            module = ref if name == "reference" else fused_cls(I, H, **kwargs).to(dev, dtype)
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
            rows.append({"cell": cell, "case": str(kwargs), "impl": name, "device": device,
                         "max_rel_err": err, "bound": bound, "ok": err <= bound})
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
    # the instruction set the CPU kernels run with (the CPU's, or TLSTM_CPU_CAPABILITY's)
    return f"{model} ({torch.ops.tlstm.cpu_capability()}), {torch.get_num_threads()} threads"


def git_commit() -> str:
    """The commit measured; TLSTM_BENCH_COMMIT names it where the tree is a copy without .git
    (as on a lent GPU machine)."""
    if os.environ.get("TLSTM_BENCH_COMMIT"):
        return os.environ["TLSTM_BENCH_COMMIT"]
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


def print_depth_table(records: list[Record], baseline: str) -> None:
    """The tLSTM's time against depth next to the stacked LSTM's, each relative to its L=1."""
    groups: dict = {}
    for r in records:
        if r.cfg.cell != "tensorized":
            continue
        key = (r.cfg.T, r.cfg.B, r.cfg.H, r.cfg.K, r.cfg.dtype, r.direction, r.cfg.tensor_dim)
        groups.setdefault(key, {}).setdefault(r.cfg.L, {})[r.impl] = statistics.median(r.times)
    impls = ["fused", baseline, "reference"]
    for (T, B, M, K, dtype, direction, tensor_dim), by_depth in groups.items():
        shape = "" if tensor_dim == 2 else f" tensor_dim={tensor_dim}"
        print(f"\ntime against depth: tensorized{shape} T={T} B={B} M={M} K={K} {dtype} "
              f"{direction} (ms, and x its own time at the smallest L); {baseline} is stacked, "
              "layers = L")
        print(f"{'L':>4} " + " ".join(f"{name:>24}" for name in impls))
        first = by_depth[min(by_depth)]
        for L in sorted(by_depth):
            cells = []
            for name in impls:
                ms = by_depth[L].get(name)
                cells.append(f"{ms:>12.2f} ({ms / first[name]:>5.2f}x)" if ms else f"{'':>24}")
            print(f"{L:>4} " + " ".join(f"{c:>24}" for c in cells))


def plot_depth(records: list[Record], baseline: str, path: str, device: str) -> None:
    """A PNG of time against depth: one panel per (M, B, dtype, direction)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot needs matplotlib (pip install matplotlib); no plot written")
        return
    panels: dict = {}
    for r in records:
        if r.cfg.cell == "tensorized":
            key = (r.cfg.tensor_dim, r.cfg.H, r.cfg.B, r.cfg.dtype, r.direction)
            panels.setdefault(key, {}).setdefault(r.impl, []).append(
                (r.cfg.L, statistics.median(r.times)))
    keys = sorted(panels)
    cols = min(4, len(keys))
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    labels = {"fused": "tLSTM (tlstm, fused)", baseline: f"stacked LSTM ({baseline}), layers = L",
              "reference": "tLSTM (eager reference)"}
    for ax, key in zip(axes.flat, keys):
        for impl, points in sorted(panels[key].items()):
            if impl == "compiled_reference":
                continue
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                    label=labels.get(impl, impl))
        tensor_dim, M, B, dtype, direction = key
        shape = "3-D tLSTM " if tensor_dim == 3 else ""
        ax.set_title(f"{shape}M={M} B={B} {dtype} {direction}", fontsize=9)
        ax.set_xlabel("depth L")
        ax.set_ylabel("ms")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"time against depth, {device}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuses, before any work, what would fail or be ignored later (parser.error: the bench's
    usage and one line); makes the --json directory."""
    if args.device == "cuda":
        if not torch.cuda.is_available():
            parser.error("--device cuda: torch sees no CUDA device on this machine "
                         "(torch.cuda.is_available() is False)")
        if not tlstm.ops.has_cuda_kernels():
            parser.error("--device cuda: this build of tlstm has no CUDA kernels (it was built "
                         "without nvcc or with TLSTM_CPU_ONLY=1)")
    for name, least in (("threads", 1), ("repeats", 1), ("warmup", 0)):
        value = getattr(args, name)
        if value is not None and value < least:
            parser.error(f"--{name} must be at least {least}, got {value}")
    if args.budget_s is not None and args.budget_s <= 0:
        parser.error(f"--budget-s must be positive, got {args.budget_s}")
    if args.json and (args.json.endswith(("/", os.sep)) or os.path.isdir(args.json)):
        try:
            os.makedirs(args.json, exist_ok=True)
        except OSError as e:
            parser.error(f"--json {args.json}: cannot make the directory ({e.strerror})")


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def hold_freed_memory() -> bool:
    """On glibc: memory freed by one call is kept for the next one (no trimming of the heap, and
    blocks up to 32 MiB from the heap rather than fresh mappings), for --hold-freed-memory. As
    users run it, the C library maps and unmaps large blocks by a threshold that moves with
    what the process freed before, so that an implementation's time can depend on which ran
    before it in the same process (page faults and zeroed pages of each fresh block):
    benchmarks/README.md says where that split the repeats. False where the C library is not
    glibc (nothing is changed)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return (mallopt(_M_MMAP_THRESHOLD, 32 << 20) == 1
            and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1)


def result_path(path: str, device: str, commit: str) -> str:
    """The result file: `path` itself, or <device>-<date>-<commit>.json in the directory
    `path` (one that exists, or a path ending in a separator)."""
    if not (os.path.isdir(path) or path.endswith(("/", os.sep))):
        return path
    slug = "".join(ch if ch.isalnum() else "-" for ch in device_name(device).lower())
    slug = "-".join(part for part in slug.split("-") if part)
    day = datetime.date.today().strftime("%Y%m%d")
    return os.path.join(path, f"{slug}-{day}-{commit[:7]}.json")


def write_results(path: str, device: str, commit: str, parity: list[dict],
                  records: list[Record], malloc: str | None = None) -> None:
    """The result file of benchmarks/README.md, plus the parity rows, the thread count and on
    the CPU the C library's handling of freed memory (`malloc`: "as is", or "held" with
    --hold-freed-memory)."""
    result = {
        "device": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": str(torch.backends.cudnn.version()) if device == "cuda" else None,
        "commit": commit,
        "date": datetime.date.today().isoformat(),
        "tf32": any(r.cfg.tf32 for r in records),
        "threads": torch.get_num_threads(),
        "malloc": malloc,
        "parity": parity,
        "records": [dict(r.to_json(), tf32=r.cfg.tf32) if r.cfg.tf32 else r.to_json()
                    for r in records],
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)


def run(args: argparse.Namespace) -> int:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"tlstm {tlstm.__version__}, torch {torch.__version__}, device {device_name(device)}")
    malloc = None
    if device == "cpu":
        malloc = "held" if args.hold_freed_memory and hold_freed_memory() else "as is"
        print(f"C library's freed memory: {malloc}")

    print("\n== parity against the float64 reference (docs/parity.md) ==")
    parity = parity_report(device)
    for row in parity:
        status = "ok" if row["ok"] else "FAIL"
        print(f"  {row['cell']:<10} {row['impl']:<14} {row['case']:<70} "
              f"max rel err {row['max_rel_err']:.2e} (bound {row['bound']:.0e}) {status}")

    baseline = lstm_baseline_name(device)
    impls = ["fused", "reference", baseline]
    if args.compile or (device == "cuda" and not args.no_compile and not args.quick):
        impls.append("compiled_reference")
    configs = []
    if "peephole" in args.cells:
        configs += peephole_configs(device, args.quick)
    if "tensorized" in args.cells:
        configs += tensorized_configs(device, args.quick)
    directions = ["fwd", "fwdbwd"]
    repeats = args.repeats if args.repeats is not None else (5 if args.quick else 15)
    print(f"\n== wall clock: median of {repeats} interleaved repeats after {args.warmup} warm-up "
          f"runs, {'CUDA events' if device == 'cuda' else 'perf_counter'}, "
          f"{torch.get_num_threads()} CPU threads ==")
    progress = Progress([work_estimate(cfg, d) for cfg in configs for d in directions],
                        enabled=not args.no_progress)
    budget_s = args.budget_s if args.budget_s is not None else (3.0 if device == "cuda" else None)
    records = []
    commit = git_commit()
    json_path = result_path(args.json, device, commit) if args.json else None
    for cfg in configs:
        records += time_config(cfg, device, impls, directions, repeats, args.warmup, progress,
                               budget_s)
        if json_path:  # after every configuration: a run cut short keeps what it measured
            write_results(json_path, device, commit, parity, records, malloc)
    print_table(records, baseline)
    if any(r.cfg.cell == "tensorized" for r in records):
        print_depth_table(records, baseline)
        if args.plot:
            plot_depth(records, baseline, args.plot, device_name(device))

    if json_path:
        print(f"\nwrote {json_path}")
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
                        help="also time the reference under torch.compile (default on a GPU "
                        f"without --quick; for T <= {COMPILE_MAX_STEPS}, on a GPU one shape)")
    parser.add_argument("--no-compile", action="store_true",
                        help="never time the compiled reference")
    parser.add_argument("--budget-s", type=float, help="stop timing an implementation after 3 "
                        "repeats once its runs of a direction took this long (default: 3 s on a "
                        "GPU, none on the CPU)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--hold-freed-memory", action="store_true",
                        help="on the CPU (glibc), keep freed memory for the next call, so that "
                             "every implementation times on memory already mapped (a "
                             "diagnosis: by default the C library is left as users run it)")
    parser.add_argument("--cells", nargs="+", choices=["peephole", "tensorized"],
                        default=["peephole", "tensorized"], help="which cells to time")
    parser.add_argument("--plot", metavar="PNG", help="plot the tLSTM's time against depth")
