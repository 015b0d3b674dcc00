"""Sequential digits: scikit-learn's 8x8 images of handwritten digits read one pixel per step
(64 steps), in reading order and in one fixed random permutation of the pixels; the class is read
from the last output. Compares tlstm.TensorizedLSTM with a stacked nn.LSTM and
tlstm.PeepholeLSTM at (about) the same number of parameters, on the same batches.

    python examples/sequential_digits.py --quick    # CPU, about 3 minutes
    python examples/sequential_digits.py            # more epochs, depths and seeds (GPU)

The 1,797 images (scikit-learn's copy of the UCI optical digits test set) are split once, by a
fixed seed, into 1,437 for training and 360 for testing; pixels are scaled from 0..16 to 0..1.
The permutation makes the task harder: neighbouring pixels arrive far apart, so the model has
to hold on to information for longer.

Writes examples/results/sequential_digits[-quick].json and .png and prints a table.
"""
from __future__ import annotations

import os
import statistics
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import tlstm  # noqa: E402

# common.CORES (kind, name, core builder), and the peephole LSTM
MODELS = common.CORES + [
    ("peephole", "PeepholeLSTM", lambda i, h, L: tlstm.PeepholeLSTM(i, h, num_layers=L)),
]


def load_digits(seed: int = 0, test: int = 360):
    """(train_x, train_y, test_x, test_y): x [N, 64] in 0..1, y [N] in 0..9; one fixed split."""
    from sklearn.datasets import load_digits as sklearn_digits  # the 8x8 digits ship with it

    data = sklearn_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    return x[test:], y[test:], x[:test], y[:test]


def permutation(seed: int = 1) -> torch.Tensor:
    """The fixed order in which the permuted task reads the 64 pixels."""
    return torch.randperm(64, generator=torch.Generator().manual_seed(seed))


class Classifier(nn.Module):
    """One pixel per step -> recurrent core -> the class from the last output."""

    def __init__(self, core: nn.Module):
        super().__init__()
        self.core = core
        self.readout = nn.Linear(common.core_width(core), 10)

    def forward(self, pixels):  # [B, 64] -> logits [B, 10]
        out, _ = self.core(pixels.t().unsqueeze(-1))  # time-major [64, B, 1]
        return self.readout(out[-1])


def make_model(kind: str, depth: int, width: int, target_params: int | None = None,
               seed: int = 0) -> Classifier:
    """The classifier around MODELS' `kind`: of width `width`, or, given target_params, of the
    smallest width whose core has that many parameters."""
    build = next(b for k, _, b in MODELS if k == kind)
    hidden = width if target_params is None else common.fit_width(
        lambda h: build(1, h, depth), target_params)
    torch.manual_seed(seed)
    return Classifier(build(1, hidden, depth))


def accuracy(model: nn.Module, x, y, device, chunk: int = 512) -> float:
    with torch.no_grad():
        right = sum((model(x[k:k + chunk].to(device)).argmax(-1).cpu() == y[k:k + chunk])
                    .sum().item() for k in range(0, len(y), chunk))
    return right / len(y)


def train(model: nn.Module, data, order: torch.Tensor | None, epochs: int, batch_size: int,
          seed: int, lr: float, device="cpu"):
    """Adam (gradient norm clipped at 1) over shuffled minibatches; the pixels read in `order`
    (None: reading order). Returns the curve [(epoch, test accuracy)], the final training
    accuracy, the median ms per training step and the training losses."""
    device = torch.device(device)
    model.to(device)
    train_x, train_y, test_x, test_y = data
    if order is not None:
        train_x, test_x = train_x[:, order], test_x[:, order]
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    curve, times, losses = [], [], []
    for epoch in range(1, epochs + 1):
        shuffle = torch.randperm(len(train_y), generator=g)
        for k in range(0, len(shuffle), batch_size):
            idx = shuffle[k:k + batch_size]
            x, y = train_x[idx].to(device), train_y[idx].to(device)
            loss, ms = common.timed_step(model, optimizer, lambda: loss_fn(model(x), y), device)
            losses.append(loss)
            times.append(ms)
        curve.append((epoch, accuracy(model, test_x, test_y, device)))
    return curve, accuracy(model, train_x, train_y, device), statistics.median(times), losses


def main(argv=None) -> int:
    parser = common.parser(__doc__, "25 epochs, fewer models, one seed, CPU-sized")
    args = parser.parse_args(argv)
    device = common.setup(args)
    quick = args.quick
    width, epochs = (32, 25) if quick else (64, 60)
    seeds = args.seeds or (1 if quick else 3)
    batch_size, lr = 64, 3e-3
    # (kind, depth) of each model; the first sets the parameter count
    plan = [("tlstm", 3), ("tlstm", 1), ("lstm", 1), ("lstm", 2), ("peephole", 1)]
    if not quick:
        plan += [("tlstm", 5), ("tlstm3d", 3), ("lstm", 3), ("peephole", 2)]
    data = load_digits()
    tasks = {"reading order": None, "permuted": permutation()}

    reference_kind, reference_depth = plan[0]
    target = common.params(make_model(reference_kind, reference_depth, width).core)
    runs = []
    for task, order in tasks.items():
        for kind, depth in plan:
            name = next(n for k, n, _ in MODELS if k == kind)
            label = (f"{name} L={depth}" if kind.startswith("tlstm")
                     else f"{name}, {depth} layer{'s' if depth > 1 else ''}")
            for seed in range(seeds):
                model = common.try_build(label, lambda: make_model(
                    kind, depth, width, None if kind == reference_kind else target, seed))
                if model is None:
                    break
                curve, train_acc, ms, _ = train(model, data, order, epochs, batch_size, seed,
                                                lr, device)
                runs.append(dict(task=task, model=label, kind=kind, depth=depth, seed=seed,
                                 params=common.params(model.core), test_accuracy=curve[-1][1],
                                 best_test_accuracy=max(a for _, a in curve),
                                 train_accuracy=train_acc, ms_per_step=round(ms, 2),
                                 curve=curve))
                print(f"{task:<14} {label:<24} seed {seed}: test accuracy {curve[-1][1]:.3f} "
                      f"(train {train_acc:.3f}), {ms:.1f} ms a step", flush=True)

    summary = []
    for task in tasks:
        for name in dict.fromkeys(r["model"] for r in runs if r["task"] == task):
            rs = [r for r in runs if r["task"] == task and r["model"] == name]
            summary.append(dict(
                task=task, model=name, params=rs[0]["params"], seeds=len(rs),
                test_accuracy=statistics.mean(r["test_accuracy"] for r in rs),
                train_accuracy=statistics.mean(r["train_accuracy"] for r in rs),
                ms_per_step=statistics.median(r["ms_per_step"] for r in rs)))
    print(f"\n8x8 digits read pixel by pixel, {epochs} epochs of batch {batch_size}, "
          f"{seeds} seed{'s' if seeds > 1 else ''}, {common.device_name(device)}")
    print(common.table(
        ["pixels", "model", "params", "test accuracy", "train accuracy", "ms per step"],
        [[r["task"], r["model"], f"{r['params']:,}", f"{r['test_accuracy']:.3f}",
          f"{r['train_accuracy']:.3f}", f"{r['ms_per_step']:.1f}"] for r in summary]))

    stem = "sequential_digits" + ("-quick" if quick else "")
    path = common.write_json(args.out, stem, dict(
        task="sequential_digits", epochs=epochs, batch=batch_size, lr=lr, width=width,
        permutation=tasks["permuted"].tolist(), **common.provenance(__file__, argv, device),
        summary=summary, runs=runs))
    plt = common.pyplot()
    if plt is not None:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
        for ax, task in zip(axes, tasks):
            for r in runs:
                if r["task"] == task:
                    xs, ys = zip(*r["curve"])
                    style = "-" if r["kind"].startswith("tlstm") else "--"
                    ax.plot(xs, ys, style, label=r["model"] + (
                        f" (seed {r['seed']})" if seeds > 1 else ""))
            ax.set_title(f"8x8 digits, {task}")
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("test accuracy")
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, stem + ".png"), dpi=110)
        plt.close(fig)
    print(f"wrote {path} and its plot")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
