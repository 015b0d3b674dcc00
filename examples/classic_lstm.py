"""Three classic experiments with one-unit recurrent networks, run with tlstm.PeepholeLSTM and
torch.nn's cells:

  sine      a one-unit LSTM with a linear activation and no bias, 8 parameters in all, predicts
            the next value of a noisy sine wave (the well-known Keras experiment);
  latching  information latching (Bengio, Simard & Frasconi 1994): a class given by the first
            steps of a sequence must be held through the noise that follows; one-unit RNN, GRU,
            LSTM (with and without a forget-gate bias of 1) and peephole LSTM, success rate over
            trials at each sequence length;
  timing    precise timing (Gers, Schraudolph & Schmidhuber 2002): emit a spike exactly D steps
            after an input spike; a one-unit LSTM with and without peepholes, success rate over
            trials at each delay.

    python examples/classic_lstm.py --quick               # all three, CPU, about 3 minutes
    python examples/classic_lstm.py --parts timing        # one of them
    python examples/classic_lstm.py                       # more of everything: CPU, 1-2 hours

Writes examples/results/classic_lstm[-quick].json and .png and prints a table per part.
"""
from __future__ import annotations

import os
import statistics
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import tlstm  # noqa: E402


class OneUnit(nn.Module):
    """A recurrent core over a 1-feature input, its output per step through `readout` (None: the
    core's output itself)."""

    def __init__(self, core: nn.Module, readout: nn.Module | None = None):
        super().__init__()
        self.core = core
        self.readout = readout

    def forward(self, x):  # [T, B, 1] -> [T, B, 1]
        out, _ = self.core(x)
        return out if self.readout is None else self.readout(out)


def forget_bias(lstm: nn.Module, value: float = 1.0) -> nn.Module:
    """Sets an nn.LSTM's (or a PeepholeLSTM's: same layout, same names) forget-gate bias. nn.LSTM
    has no argument for it; the gates are stacked i, f, g, o, so this is the one-liner:
        lstm.bias_hh_l0.data[H:2 * H].fill_(value)
    (bias_ih_l0 keeps its small random forget bias, which adds to it)."""
    H = lstm.hidden_size
    lstm.bias_hh_l0.data[H:2 * H].fill_(value)
    return lstm


def fit(model: nn.Module, make_batch, loss_fn, steps: int, batch_size: int, seed: int,
        lr: float):
    """Adam (gradient norm clipped at 1) on a fresh batch a step. Returns the training losses and
    the median ms per step."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses, times = [], []
    for _ in range(steps):
        x, y = make_batch(batch_size, g)
        loss, ms = common.timed_step(model, optimizer, lambda: loss_fn(model(x), y),
                                     torch.device("cpu"))
        losses.append(loss)
        times.append(ms)
    return losses, statistics.median(times)


# -- sine: 8 parameters predict a noisy sine wave -------------------------------------------------

SINE_PERIOD, SINE_NOISE, SINE_WARMUP = 25, 0.1, 10


def sine_batch(length: int, size: int, g: torch.Generator):
    """Noisy inputs x_t = sin(w t + phase) + noise [T, B, 1] and the target of each step, the next
    noisy value [T, B, 1]; the clean next values come third."""
    phase = torch.rand(1, size, generator=g) * 2 * torch.pi
    t = torch.arange(length + 1, dtype=torch.float32).unsqueeze(1)
    clean = torch.sin(2 * torch.pi * t / SINE_PERIOD + phase)
    noisy = clean + SINE_NOISE * torch.randn(length + 1, size, generator=g)
    return noisy[:-1].unsqueeze(-1), noisy[1:].unsqueeze(-1), clean[1:].unsqueeze(-1)


SINE_MODELS = [  # (name, core); the core's one output is the prediction
    ("LSTM, linear, no bias", lambda: tlstm.PeepholeLSTM(1, 1, bias=False, peephole=False,
                                                          activation="identity")),
    ("LSTM, tanh, no bias", lambda: tlstm.PeepholeLSTM(1, 1, bias=False, peephole=False)),
    ("peephole LSTM, linear, no bias", lambda: tlstm.PeepholeLSTM(1, 1, bias=False,
                                                                  activation="identity")),
]


def sine_mse(predict, x, clean) -> float:
    """Mean squared error against the clean next value, past the warm-up steps."""
    return ((predict(x) - clean)[SINE_WARMUP:] ** 2).mean().item()


def run_sine(quick: bool, seeds: int | None) -> dict:
    length, steps = (60, 1500) if quick else (200, 5000)
    seeds = seeds or (3 if quick else 10)
    test_x, test_y, test_clean = sine_batch(length, 256, torch.Generator().manual_seed(10_000))
    train_x, train_y, _ = sine_batch(length, 256, torch.Generator().manual_seed(20_000))
    # The baselines: repeat the last input; the least-squares linear predictor from the last two
    # inputs (what a linear recurrence of order 2 can do), fitted on the training sequences.
    lagged = torch.stack([train_x[1:, :, 0], train_x[:-1, :, 0]], -1).reshape(-1, 2)
    ar = torch.linalg.lstsq(lagged, train_y[1:, :, 0].reshape(-1, 1)).solution[:, 0]

    def ar2(x):
        previous = torch.cat([x[:1], x[:-1]])
        return ar[0] * x + ar[1] * previous

    rows = [dict(model="baseline: repeat the last input", params=0,
                 mse=sine_mse(lambda x: x, test_x, test_clean)),
            dict(model="baseline: least squares on the last 2 inputs", params=2,
                 mse=sine_mse(ar2, test_x, test_clean))]
    trace = dict(input=test_x[:, 0, 0].tolist(), clean=test_clean[:, 0, 0].tolist())
    for name, build in SINE_MODELS:
        mses, times = [], []
        for seed in range(seeds):
            torch.manual_seed(seed)
            model = OneUnit(build())
            _, ms = fit(model, lambda size, g: sine_batch(length, size, g)[:2],
                        nn.MSELoss(), steps, 32, seed, 2e-2)
            with torch.no_grad():
                mses.append(sine_mse(model, test_x, test_clean))
                if seed == 0:
                    trace[name] = model(test_x)[:, 0, 0].tolist()
            times.append(ms)
        rows.append(dict(model=name, params=common.params(model), mse=statistics.median(mses),
                         mse_per_seed=mses, ms_per_step=statistics.median(times)))
        print(f"sine: {name:<32} median MSE {rows[-1]['mse']:.4f} over {seeds} seeds",
              flush=True)
    print(f"\nsine: next value of sin(2 pi t / {SINE_PERIOD}) + N(0, {SINE_NOISE}^2) noise, "
          f"{steps} steps of 32 sequences of {length}; MSE against the clean next value "
          f"(the noise alone is {SINE_NOISE ** 2:.4f} of variance)")
    print(common.table(["model", "params", "median test MSE", "ms per step"],
                       [[r["model"], r["params"], f"{r['mse']:.4f}",
                         f"{r['ms_per_step']:.1f}" if "ms_per_step" in r else ""]
                        for r in rows]))
    return dict(length=length, steps=steps, period=SINE_PERIOD, noise=SINE_NOISE,
                warmup=SINE_WARMUP, seeds=seeds, rows=rows, trace=trace)


def trials_cell(row: dict, key) -> str:
    """The share of trials that succeeded, and the median test accuracy over all trials."""
    return f"{row['success'][key]:.0%} ({statistics.median(row['accuracy'][key]):.2f})"


# -- latching: hold a class through noise ---------------------------------------------------------

LATCH_STEPS, LATCH_NOISE = 3, 0.2


def latch_batch(length: int, size: int, g: torch.Generator):
    """Inputs [T, B, 1]: the first LATCH_STEPS are +1 for class 1 and -1 for class 0, the rest
    Gaussian noise; targets [B] the class, read at the last step."""
    label = torch.randint(0, 2, (size,), generator=g)
    x = LATCH_NOISE * torch.randn(length, size, 1, generator=g)
    x[:LATCH_STEPS] = (2 * label - 1).float().view(1, size, 1)
    return x, label.float()


LATCH_MODELS = [  # (name, core), each of one unit; a Linear(1, 1) reads the class
    ("RNN (tanh)", lambda: nn.RNN(1, 1)),
    ("GRU", lambda: nn.GRU(1, 1)),
    ("nn.LSTM", lambda: nn.LSTM(1, 1)),
    ("nn.LSTM, forget bias 1", lambda: forget_bias(nn.LSTM(1, 1))),
    ("PeepholeLSTM", lambda: tlstm.PeepholeLSTM(1, 1)),
    ("PeepholeLSTM, forget bias 1", lambda: forget_bias(tlstm.PeepholeLSTM(1, 1))),
]


def latch_accuracy(model, x, label) -> float:
    with torch.no_grad():
        return ((model(x)[-1, :, 0] > 0).float() == label).float().mean().item()


def one_unit_trials(part: str, letter: str, models, settings, make_batch, loss_for, accuracy,
                    steps: int, seeds: int, lr: float) -> list[dict]:
    """A row per model of one-unit cores (each read by a Linear(1, 1)) trained from `seeds` seeds
    at each setting (a length or a delay, named `letter`): make_batch(setting, size, generator)
    gives inputs and targets, loss_for(setting) the loss, accuracy(model, x, y) the test
    accuracy on 500 fixed sequences. A row holds the accuracies and the share of trials reaching
    95%."""
    rows = []
    for name, build in models:
        row = dict(model=name, success={}, accuracy={})
        for setting in settings:
            test_x, test_y = make_batch(setting, 500, torch.Generator().manual_seed(10_000))
            loss = loss_for(setting)
            accuracies = []
            for seed in range(seeds):
                torch.manual_seed(seed)
                model = OneUnit(build(), nn.Linear(1, 1))
                fit(model, lambda size, g: make_batch(setting, size, g), loss, steps, 32, seed,
                    lr)
                accuracies.append(accuracy(model, test_x, test_y))
            row["accuracy"][setting] = accuracies
            row["success"][setting] = sum(a >= 0.95 for a in accuracies) / seeds
        row["params"] = common.params(model)
        rows.append(row)
        print(f"{part}: {name}: " + ", ".join(
            f"{letter}={n}: {row['success'][n]:.0%}" for n in settings), flush=True)
    return rows


def run_latching(quick: bool, seeds: int | None) -> dict:
    lengths, steps = ((10, 20, 40), 500) if quick else ((10, 20, 40, 80, 160), 2000)
    seeds = seeds or (4 if quick else 20)
    loss = nn.BCEWithLogitsLoss()
    rows = one_unit_trials("latching", "T", LATCH_MODELS, lengths, latch_batch,
                           lambda length: lambda out, label: loss(out[-1, :, 0], label),
                           latch_accuracy, steps, seeds, 3e-2)
    print(f"\nlatching: share of {seeds} trials reaching 95% test accuracy (and the median test "
          f"accuracy) after {steps} steps of 32 sequences; the class in the first {LATCH_STEPS} "
          f"steps, then N(0, {LATCH_NOISE}^2) noise")
    print(common.table(["model", "params"] + [f"T = {n}" for n in lengths],
                       [[r["model"], r["params"]] + [trials_cell(r, n) for n in lengths]
                        for r in rows]))
    return dict(lengths=list(lengths), steps=steps, seeds=seeds, latch_steps=LATCH_STEPS,
                noise=LATCH_NOISE, rows=rows)


# -- timing: a spike D steps after the input's ----------------------------------------------------

def timing_batch(delay: int, size: int, g: torch.Generator):
    """Inputs [T, B, 1] with one spike, at a random step of the first T - D, and targets [T, B, 1]
    with one spike D steps later; T = 3 D."""
    length = 3 * delay
    start = torch.randint(0, length - delay, (size,), generator=g)
    x = torch.zeros(length, size, 1)
    y = torch.zeros(length, size, 1)
    x[start, torch.arange(size), 0] = 1.0
    y[start + delay, torch.arange(size), 0] = 1.0
    return x, y


def timing_accuracy(model, x, y) -> float:
    """The share of test sequences whose output spikes (a positive logit: a probability above
    one half) at the target's spike and at no other step."""
    with torch.no_grad():
        return ((model(x) > 0) == (y > 0.5)).all(0).float().mean().item()


TIMING_MODELS = [  # (name, core), each of one unit; a Linear(1, 1) gives the spike's logit
    ("LSTM, peepholes", lambda: tlstm.PeepholeLSTM(1, 1, peephole=True)),
    ("LSTM, no peepholes", lambda: tlstm.PeepholeLSTM(1, 1, peephole=False)),
]


def run_timing(quick: bool, seeds: int | None) -> dict:
    delays, steps = ((4, 8, 12), 1000) if quick else ((4, 8, 12, 16, 32), 3000)
    seeds = seeds or (8 if quick else 20)
    # one spike among 3 D steps: weigh the spike as all the silent steps together
    rows = one_unit_trials(
        "timing", "D", TIMING_MODELS, delays, timing_batch,
        lambda delay: nn.BCEWithLogitsLoss(pos_weight=torch.tensor(3.0 * delay - 1)),
        timing_accuracy, steps, seeds, 2e-2)
    print(f"\ntiming: share of {seeds} trials whose output spikes exactly D steps after the "
          f"input's, and nowhere else, in 95% of test sequences (and the median share of test "
          f"sequences timed exactly), after {steps} steps of 32 sequences of 3 D")
    print(common.table(["model", "params"] + [f"D = {d}" for d in delays],
                       [[r["model"], r["params"]] + [trials_cell(r, d) for d in delays]
                        for r in rows]))
    return dict(delays=list(delays), steps=steps, seeds=seeds, rows=rows)


PARTS = {"sine": run_sine, "latching": run_latching, "timing": run_timing}


def plot(plt, results: dict, path: str) -> None:
    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.6), squeeze=False)
    for ax, (part, r) in zip(axes[0], results.items()):
        if part == "sine":
            trace = r["trace"]
            n = min(len(trace["input"]), 60)
            steps = list(range(n))  # input t; the prediction made then is of step t + 1
            ax.plot(steps, trace["input"][:n], ".", color="0.6", label="noisy input")
            ax.plot([t + 1 for t in steps], trace["clean"][:n], "k-", lw=1, label="clean signal")
            for name, _ in SINE_MODELS[:1]:
                ax.plot([t + 1 for t in steps], trace[name][:n], "-",
                        label=f"{name}: prediction (8 params)")
            ax.set_xlabel("step")
            ax.set_title("sine: prediction of the next value")
        else:
            key = "lengths" if part == "latching" else "delays"
            for row in r["rows"]:
                ax.plot(r[key], [row["success"][n] for n in r[key]], "o-", label=row["model"])
            ax.set_xscale("log")
            ax.set_xticks(r[key], [str(n) for n in r[key]])
            ax.minorticks_off()
            ax.set_xlabel("sequence length T" if part == "latching" else "delay D")
            ax.set_ylabel(f"share of {r['seeds']} trials solved")
            ax.set_ylim(-0.05, 1.05)
            ax.set_title(part)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = common.parser(__doc__, "fewer trials, lengths and delays; CPU-sized")
    parser.add_argument("--parts", default="sine,latching,timing",
                        help="comma-separated, out of " + ", ".join(PARTS))
    args = parser.parse_args(argv)
    if args.device not in (None, "cpu"):
        parser.error("these one-unit models run on the CPU only (a GPU would not be faster)")
    args.device = "cpu"
    device = common.setup(args)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {unknown}: choose from {list(PARTS)}")
    results = {}
    for part in parts:
        start = time.perf_counter()
        results[part] = PARTS[part](args.quick, args.seeds)
        results[part]["seconds"] = round(time.perf_counter() - start, 1)
        print()
    stem = "classic_lstm" + ("-quick" if args.quick else "")
    if parts != list(PARTS):
        stem += "-" + "-".join(parts)
    path = common.write_json(args.out, stem, dict(
        task="classic_lstm", **common.provenance(__file__, argv, device), **results))
    plt = common.pyplot()
    if plt is not None:
        plot(plt, results, os.path.join(args.out, stem + ".png"))
    print(f"wrote {path} and its plot")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
