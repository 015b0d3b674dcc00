"""The tLSTM paper's addition task: read two D-digit numbers one digit per step, then write their
sum one digit per step. Compares tlstm.TensorizedLSTM at several depths (and the 3-D tLSTM where
this version of tlstm runs it) with a stacked nn.LSTM of 1..L layers at (about) the same number
of parameters, on the same batches.

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

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

VOCAB = 13  # digits 0-9, separator 10, blank 11, (padding 12, unused)
SEP, BLANK = 10, 11

MODELS = common.CORES  # (kind, name, core builder): see common.CORES


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


params = common.params


def make_model(kind: str, depth: int, width: int, target_params: int | None = None,
               seed: int = 0) -> common.SymbolModel:
    """The model of MODELS' `kind`: of width `width`, or, given target_params, of the smallest
    width whose core has that many parameters."""
    build = next(b for k, _, b in MODELS if k == kind)
    return common.make_symbol_model(build, depth, width, VOCAB, 10, target_params, seed)


def train(model, digits: int, steps: int, batch_size: int, seed: int, lr: float,
          eval_every: int, device="cpu"):
    """common.train_symbols on D-digit sums: the curve [(samples, whole-sum accuracy)], the
    samples to 99% (or None), the median ms per step and the training losses."""
    return common.train_symbols(model, lambda size, g: batch(digits, size, g), steps,
                                batch_size, seed, lr, eval_every, device)


def main(argv=None) -> int:
    parser = common.parser(__doc__, "3 digits, one seed, CPU-sized")
    args = parser.parse_args(argv)
    device = common.setup(args)
    quick = args.quick
    digits, steps, width = (3, 5000, 64) if quick else (15, 20000, 128)
    seeds = args.seeds or (1 if quick else 3)
    batch_size, lr, eval_every = 32, 3e-3, 100
    depths = (1, 3) if quick else (1, 3, 5)

    runs = common.run_symbol_models(MODELS, depths, width, VOCAB, 10,
                                    lambda size, g: batch(digits, size, g), steps, batch_size,
                                    seeds, lr, eval_every, device)
    summary = common.summarize(runs)
    budget = steps * batch_size
    print(f"\naddition of two {digits}-digit numbers, batch {batch_size}, budget {budget:,} "
          f"samples, {common.device_name(device)}")
    print(common.symbol_table(summary, budget))

    stem = "addition" + ("-quick" if quick else "")
    path = common.write_json(args.out, stem, dict(
        task="addition", digits=digits, batch=batch_size, steps=steps, lr=lr, width=width,
        **common.provenance(__file__, argv, device), summary=summary, runs=runs))
    plt = common.pyplot()
    if plt is not None:
        common.plot_curves(plt, runs, f"addition of two {digits}-digit numbers",
                           "whole-sum accuracy", os.path.join(args.out, stem + ".png"))
    print(f"wrote {path} and its plot")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
