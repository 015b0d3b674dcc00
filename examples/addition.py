"""The tLSTM paper's addition task: read two D-digit numbers one digit per step, then write their
sum one digit per step. Compares tlstm.TensorizedLSTM at several depths with a stacked
nn.LSTM of 1..L layers at (about) the same number of parameters, on the same batches.

    python examples/addition.py --quick      # 3 digits, CPU, a few minutes
    python examples/addition.py              # 15 digits, several seeds (sized for a GPU)

Each step reads one token: the digits of a (least significant first), a separator, the digits of
b, a separator, then D + 1 blanks during which the model writes the digits of a + b (least
significant first). The loss is the cross-entropy of those D + 1 digits; accuracy counts a sum
right only when all its digits are. The paper's measure is the number of training samples
needed to pass 99% accuracy; where a model does not get there within the budget, the table
gives its accuracy at the end. With flush (the default), the tLSTM's output t belongs to input
t, so the targets are those of an nn.LSTM: its depth costs no target shifting.

Writes examples/results/addition[-quick].json and .png and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from torch import nn

import tlstm

VOCAB = 13  # digits 0-9, separator 10, blank 11, (padding 12, unused)
SEP, BLANK = 10, 11


def batch(digits: int, size: int, generator: torch.Generator):
    """Token inputs [T, B] and target digits [D + 1, B] of a + b, least significant first."""
    a = torch.randint(0, 10, (digits, size), generator=generator)
    b = torch.randint(0, 10, (digits, size), generator=generator)
    total = torch.zeros(digits + 1, size, dtype=torch.long)
    carry = torch.zeros(size, dtype=torch.long)
    for k in range(digits):
        s = a[k] + b[k] + carry
        total[k], carry = s % 10, s // 10
    total[digits] = carry
    sep = torch.full((1, size), SEP)
    blanks = torch.full((digits + 1, size), BLANK)
    return torch.cat([a, sep, b, sep, blanks]), total


class Model(nn.Module):
    """Embedding -> recurrent core -> per-step logits over the 10 digits."""

    def __init__(self, core: nn.Module, width: int, out_width: int):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width)
        self.core = core
        self.readout = nn.Linear(out_width, 10)

    def forward(self, tokens):
        out, _ = self.core(self.embed(tokens))
        return self.readout(out)


def params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def make_model(kind: str, depth: int, width: int, target_params: int | None = None) -> Model:
    """A tLSTM of width `width`, or an nn.LSTM of `depth` layers whose width makes its core about
    `target_params` parameters."""
    if kind == "tlstm":
        return Model(tlstm.TensorizedLSTM(width, width, depth=depth), width, width)
    hidden = width
    if target_params is not None:  # the smallest width whose core reaches the target
        hidden = 1
        while params(nn.LSTM(width, hidden, num_layers=depth)) < target_params:
            hidden += 1
    return Model(nn.LSTM(width, hidden, num_layers=depth), width, hidden)


def train(model: Model, digits: int, steps: int, batch_size: int, seed: int, lr: float,
          eval_every: int):
    """Adam on fresh batches; returns the evaluation curve [(samples, accuracy)], the samples
    seen when accuracy first passed 99% (or None), the median ms per training step and the
    training losses."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    test_g = torch.Generator().manual_seed(10_000 + seed)
    test_x, test_y = batch(digits, 500, test_g)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    curve, solved_at, times, losses = [], None, [], []
    for step in range(1, steps + 1):
        x, y = batch(digits, batch_size, g)
        start = time.perf_counter()
        logits = model(x)[-(digits + 1):]  # the answer steps
        loss = loss_fn(logits.reshape(-1, 10), y.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        times.append((time.perf_counter() - start) * 1e3)
        losses.append(loss.item())
        if step % eval_every == 0 or step == steps:
            with torch.no_grad():
                pred = model(test_x)[-(digits + 1):].argmax(-1)
            accuracy = (pred == test_y).all(0).float().mean().item()
            curve.append((step * batch_size, accuracy))
            if solved_at is None and accuracy >= 0.99:
                solved_at = step * batch_size
                break
    return curve, solved_at, statistics.median(times), losses


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 digits, one seed, CPU-sized")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    quick = args.quick
    digits, steps, width = (3, 5000, 64) if quick else (15, 20000, 128)
    seeds = args.seeds or (1 if quick else 3)
    batch_size, lr, eval_every = 32, 3e-3, 100
    depths = (1, 3) if quick else (1, 3, 5)

    reference = params(make_model("tlstm", depths[-1], width).core)
    runs = []
    for kind in ("tlstm", "lstm"):
        for depth in depths:
            for seed in range(seeds):
                model = make_model(kind, depth, width, reference if kind == "lstm" else None)
                curve, solved, ms, _ = train(model, digits, steps, batch_size, seed, lr,
                                             eval_every)
                runs.append(dict(model=f"{'TensorizedLSTM' if kind == 'tlstm' else 'nn.LSTM'}"
                                 f" {'L' if kind == 'tlstm' else 'layers'}={depth}",
                                 kind=kind, depth=depth, seed=seed, params=params(model.core),
                                 samples_to_99=solved, final_accuracy=curve[-1][1],
                                 ms_per_step=round(ms, 2), curve=curve))
                print(f"{runs[-1]['model']:<24} seed {seed}: accuracy {curve[-1][1]:.3f} after "
                      f"{curve[-1][0]} samples, {ms:.1f} ms a step", flush=True)

    print(f"\naddition of two {digits}-digit numbers, batch {batch_size}, budget "
          f"{steps * batch_size} samples, {torch.get_num_threads()} threads")
    print(f"{'model':<24} {'params':>8} {'samples to 99%':>16} {'final accuracy':>16} "
          f"{'ms/step':>8}")
    summary = []
    for name in dict.fromkeys(r["model"] for r in runs):
        rs = [r for r in runs if r["model"] == name]
        solved = [r["samples_to_99"] for r in rs if r["samples_to_99"] is not None]
        row = dict(model=name, params=rs[0]["params"],
                   samples_to_99=(statistics.median(solved) if len(solved) == len(rs) else None),
                   solved_seeds=len(solved), seeds=len(rs),
                   final_accuracy=statistics.mean(r["final_accuracy"] for r in rs),
                   ms_per_step=statistics.median(r["ms_per_step"] for r in rs))
        summary.append(row)
        reached = (f"{row['samples_to_99']:,.0f}" if row["samples_to_99"] is not None
                   else f"not ({row['solved_seeds']}/{row['seeds']})")
        print(f"{name:<24} {row['params']:>8,} {reached:>16} {row['final_accuracy']:>16.3f} "
              f"{row['ms_per_step']:>8.1f}")

    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, "addition" + ("-quick" if quick else ""))
    with open(stem + ".json", "w") as f:
        json.dump(dict(task="addition", digits=digits, batch=batch_size, steps=steps, lr=lr,
                       threads=torch.get_num_threads(), torch=torch.__version__,
                       summary=summary, runs=runs), f, indent=1)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no matplotlib: no plot")
        return 0
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for r in runs:
        xs, ys = zip(*r["curve"])
        style = "-" if r["kind"] == "tlstm" else "--"
        ax.plot(xs, ys, style, label=f"{r['model']} (seed {r['seed']})" if seeds > 1 else
                r["model"])
    ax.set_xlabel("training samples")
    ax.set_ylabel("whole-sum accuracy")
    ax.set_title(f"addition of two {digits}-digit numbers")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(stem + ".png", dpi=110)
    print(f"wrote {stem}.json and {stem}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
