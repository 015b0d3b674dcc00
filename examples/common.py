"""What the examples share: the command-line flags, matching parameter counts, building a model
that this version of tlstm may not have yet, the training loop of the symbol tasks, timing, the
results' provenance (commit, device, command), the table and the JSON file.

Not an example itself: the scripts beside it import it.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable

import torch
from torch import nn

import tlstm

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")


# -- flags and environment ------------------------------------------------------------------------

def parser(doc: str, quick_help: str) -> argparse.ArgumentParser:
    """The flags every example takes."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--seeds", type=int, default=None, help="seeds (trials) per model")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1, so that timings do not depend on the "
                        "machine's other work as much)")
    p.add_argument("--device", default=None,
                   help="cpu or cuda (default: cpu with --quick, else cuda where there is one)")
    p.add_argument("--out", default=RESULTS, help="folder for the JSON file and the plot")
    return p


def setup(args) -> torch.device:
    """Applies --threads and returns the device to train on."""
    torch.set_num_threads(args.threads)
    source = tlstm_source()
    if source != "this checkout":
        print(f"note: running {source}, whose code the commit in the results does not "
              "describe (PYTHONPATH=. runs this checkout's)", flush=True)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() and not args.quick else "cpu"
    return torch.device(args.device)


# The recurrent cores the examples compare, one line each: (kind, name, core builder (input
# width, hidden width, depth)). The first sets the parameter count that the others' widths are
# fitted to. A model that this version of tlstm cannot build (the 3-D tLSTM before its fused
# kernels) is skipped with a note.
CORES = [
    ("tlstm", "TensorizedLSTM", lambda i, h, L: tlstm.TensorizedLSTM(i, h, depth=L)),
    ("tlstm3d", "3-D TensorizedLSTM",
     lambda i, h, L: tlstm.TensorizedLSTM(i, h, depth=L, tensor_dim=3)),
    ("lstm", "nn.LSTM", lambda i, h, L: nn.LSTM(i, h, num_layers=L)),
]


def sync(device: torch.device) -> None:
    """Waits for the GPU, so that a step's wall-clock time covers its kernels."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = "CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    threads = torch.get_num_threads()
    return f"{name}, {threads} thread{'s' if threads > 1 else ''}"


def commit() -> str:
    """The short hash of HEAD, with "+changes" where tracked files outside examples/results differ
    from it (results then do not come from that commit alone); "unknown" outside a checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, text=True,
                              capture_output=True, check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                  ".", ":!examples/results"], cwd=os.path.dirname(HERE),
                                 text=True, capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if changed else "")


def tlstm_source() -> str:
    """Which tlstm the example imported: this checkout's (then the commit describes it), or an
    installed copy elsewhere (an editable install of another checkout, say), whose code the
    commit does not describe."""
    import tlstm

    inside = os.path.commonpath([os.path.abspath(tlstm.__file__), os.path.dirname(HERE)])
    if inside == os.path.dirname(HERE):
        return "this checkout"
    return f"tlstm {tlstm.__version__} installed outside this checkout"


def provenance(script: str, argv, device: torch.device) -> dict:
    """Where a result comes from: the commit, the device and the command that reproduces it."""
    args = list(sys.argv[1:] if argv is None else argv)
    return dict(commit=commit(), tlstm=tlstm_source(), device=device_name(device),
                command=" ".join(["python", f"examples/{os.path.basename(script)}", *args]),
                torch=torch.__version__, threads=torch.get_num_threads())


def write_json(out: str, stem: str, payload: dict) -> str:
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, stem + ".json")
    with open(path, "w") as f:
        json.dump(payload, f, indent=1)
    return path


def pyplot():
    """matplotlib's pyplot without a display, or None (then the examples write no plot)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no matplotlib: no plot")
        return None
    return plt


def table(headers, rows) -> str:
    """A Markdown table, its columns padded to line up in a terminal too."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[k]) for r in cells) for k in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


# -- models ---------------------------------------------------------------------------------------

def params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def fit_width(build: Callable[[int], nn.Module], target: int) -> int:
    """The smallest width w whose build(w) has at least `target` parameters (doubling, then a
    bisection: the count grows with the width)."""
    high = 1
    while params(build(high)) < target:
        high *= 2
    low = high // 2 + 1 if high > 1 else 1
    while low < high:
        mid = (low + high) // 2
        if params(build(mid)) >= target:
            high = mid
        else:
            low = mid + 1
    return low


def try_build(name: str, build: Callable[[], nn.Module]) -> nn.Module | None:
    """build(), or None with a printed note where this version of tlstm does not run that model
    yet (the 3-D tLSTM's fused module raises NotImplementedError; an older tlstm without the
    argument raises TypeError)."""
    try:
        return build()
    except (NotImplementedError, TypeError) as error:
        print(f"skipping {name}: {type(error).__name__}: {str(error).splitlines()[0]}",
              flush=True)
        return None


# -- the symbol tasks (addition, memorization) ----------------------------------------------------

class SymbolModel(nn.Module):
    """Embedding -> recurrent core -> per-step logits."""

    def __init__(self, core: nn.Module, vocab: int, width: int, out_width: int, classes: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.core = core
        self.readout = nn.Linear(out_width, classes)

    def forward(self, tokens):
        out, _ = self.core(self.embed(tokens))
        return self.readout(out)


def core_width(core: nn.Module) -> int:
    """The width of what the core returns at each step."""
    proj = getattr(core, "proj_size", 0)
    return proj if proj else core.hidden_size


def make_symbol_model(build, depth: int, width: int, vocab: int, classes: int,
                      target_params: int | None = None, seed: int = 0) -> SymbolModel:
    """A SymbolModel around build(input width, hidden width, depth): the hidden width is `width`,
    or the smallest whose core has `target_params` parameters. The weights are drawn from `seed`.
    """
    hidden = width
    if target_params is not None:
        hidden = fit_width(lambda h: build(width, h, depth), target_params)
    torch.manual_seed(seed)
    core = build(width, hidden, depth)
    return SymbolModel(core, vocab, width, core_width(core), classes)


def run_symbol_models(models, depths, width: int, vocab: int, classes: int, make_batch,
                      steps: int, batch_size: int, seeds: int, lr: float, eval_every: int,
                      device) -> list[dict]:
    """Trains each model of `models` at each depth and seed on the same batches. `models` lists
    (kind, name, build) with build(input width, hidden width, depth) -> core; the first kind's
    core at the largest depth, of width `width`, sets the parameter count that the others' widths
    are fitted to (the first kind is the tLSTM, whose count does not depend on the depth). A
    model that this version of tlstm cannot build is skipped with a note."""
    reference_kind, _, reference_build = models[0]
    target = params(reference_build(width, width, depths[-1]))
    runs = []
    for kind, name, build in models:
        for depth in depths:
            label = (f"{name} L={depth}" if kind.startswith("tlstm")
                     else f"{name}, {depth} layer{'s' if depth > 1 else ''}")
            for seed in range(seeds):
                model = try_build(label, lambda: make_symbol_model(
                    build, depth, width, vocab, classes,
                    None if kind == reference_kind else target, seed))
                if model is None:
                    break
                curve, reached, ms, _ = train_symbols(model, make_batch, steps, batch_size,
                                                      seed, lr, eval_every, device)
                runs.append(dict(model=label, kind=kind, depth=depth, seed=seed,
                                 params=params(model.core), samples_to_99=reached,
                                 final_accuracy=curve[-1][1], ms_per_step=round(ms, 2),
                                 curve=curve))
                print(f"{label:<26} seed {seed}: accuracy {curve[-1][1]:.3f} after "
                      f"{curve[-1][0]:,} samples, {ms:.1f} ms a step", flush=True)
    return runs


def timed_step(model: nn.Module, optimizer, loss_of: Callable[[], torch.Tensor],
               device: torch.device) -> tuple[float, float]:
    """One training step on the loss that loss_of() computes with the model: gradients, their
    norm clipped at 1, the optimizer's step. Returns the loss and the step's wall-clock ms (the
    GPU waited for at both ends)."""
    sync(device)
    start = time.perf_counter()
    loss = loss_of()
    optimizer.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    sync(device)
    return loss.item(), (time.perf_counter() - start) * 1e3


def train_symbols(model: nn.Module, make_batch, steps: int, batch_size: int, seed: int,
                  lr: float, eval_every: int, device: torch.device | str = "cpu",
                  test_size: int = 500, goal: float = 0.99):
    """Adam (gradient norm clipped at 1) on a fresh batch each step; the loss is the cross-entropy
    of the answer, the last A outputs. make_batch(size, generator) returns tokens [T, B] and the
    answer [A, B]. Every eval_every steps the accuracy on a fixed test set counts an answer right
    only when all its A symbols are; training stops once it reaches `goal`.

    Returns the curve [(samples, accuracy)], the samples seen when the accuracy first reached the
    goal (or None), the median ms per training step and the training losses."""
    device = torch.device(device)
    model.to(device)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    test_g = torch.Generator().manual_seed(10_000 + seed)
    test_x, test_y = (t.to(device) for t in make_batch(test_size, test_g))
    answer = test_y.size(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    curve, reached, times, losses = [], None, [], []
    for step in range(1, steps + 1):
        x, y = (t.to(device) for t in make_batch(batch_size, g))

        def loss_of():
            logits = model(x)[-answer:]
            return loss_fn(logits.reshape(-1, logits.size(-1)), y.reshape(-1))

        loss, ms = timed_step(model, optimizer, loss_of, device)
        losses.append(loss)
        times.append(ms)
        if step % eval_every == 0 or step == steps:
            with torch.no_grad():
                pred = model(test_x)[-answer:].argmax(-1)
            accuracy = (pred == test_y).all(0).float().mean().item()
            curve.append((step * batch_size, accuracy))
            if reached is None and accuracy >= goal:
                reached = step * batch_size
                break
    return curve, reached, statistics.median(times), losses


def summarize(runs: list[dict]) -> list[dict]:
    """One row per model over its seeds: median samples to the goal (None unless every seed got
    there), mean final accuracy, median ms per step."""
    rows = []
    for name in dict.fromkeys(r["model"] for r in runs):
        rs = [r for r in runs if r["model"] == name]
        reached = [r["samples_to_99"] for r in rs if r["samples_to_99"] is not None]
        rows.append(dict(
            model=name, params=rs[0]["params"],
            samples_to_99=statistics.median(reached) if len(reached) == len(rs) else None,
            solved_seeds=len(reached), seeds=len(rs),
            final_accuracy=statistics.mean(r["final_accuracy"] for r in rs),
            ms_per_step=statistics.median(r["ms_per_step"] for r in rs)))
    return rows


def symbol_table(rows: list[dict], budget: int) -> str:
    def reached(row):
        if row["samples_to_99"] is not None:
            return f"{row['samples_to_99']:,.0f}"
        if row["seeds"] == 1:
            return "not reached"
        return f"not reached ({row['solved_seeds']}/{row['seeds']} seeds)"
    return table(["model", "params", "samples to 99%", f"accuracy after {budget:,} samples",
                  "ms per step"],
                 [[r["model"], f"{r['params']:,}", reached(r), f"{r['final_accuracy']:.3f}",
                   f"{r['ms_per_step']:.1f}"] for r in rows])


def plot_curves(plt, runs: list[dict], title: str, ylabel: str, path: str) -> None:
    """Accuracy against training samples, one line per run (dashed for the stacked LSTMs)."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    seeds = len({r["seed"] for r in runs})
    for r in runs:
        xs, ys = zip(*r["curve"])
        style = "--" if r["kind"] in ("lstm", "peephole") else "-"
        ax.plot(xs, ys, style, label=r["model"] + (f" (seed {r['seed']})" if seeds > 1 else ""))
    ax.set_xlabel("training samples")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
