"""The tLSTM paper's memorization task: read a sequence of N random symbols, then write it back.
Compares tlstm.TensorizedLSTM at several depths (and the 3-D tLSTM where this version of tlstm
runs it) with a stacked nn.LSTM of 1..L layers at (about) the same number of parameters, on the
same batches.

    python examples/memorization.py --quick    # 8 symbols out of 10, CPU, about 2 minutes
    python examples/memorization.py            # 20 symbols out of 64, 3 seeds (for a GPU)

Each step reads one token: the N symbols (each one of S, drawn uniformly), a go marker, then N
blanks during which the model writes the N symbols in the order it read them. The loss is the
cross-entropy of those N outputs; accuracy counts a sequence right only when all its N symbols
are. The paper's measure is the number of training samples needed to pass 99% accuracy; where
a model does not get there within the budget, the table gives its accuracy at the end.

Writes examples/results/memorization[-quick].json and .png and prints a table.
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

MODELS = common.CORES  # (kind, name, core builder): see common.CORES


def batch(length: int, symbols: int, size: int, generator: torch.Generator):
    """Token inputs [2N + 1, B] and the answer [N, B]: tokens 0..S-1 are the symbols, S the go
    marker and S + 1 the blank."""
    sequence = torch.randint(0, symbols, (length, size), generator=generator)
    go = torch.full((1, size), symbols)
    blanks = torch.full((length, size), symbols + 1)
    return torch.cat([sequence, go, blanks]), sequence


def make_model(kind: str, depth: int, width: int, symbols: int,
               target_params: int | None = None, seed: int = 0) -> common.SymbolModel:
    """The model of MODELS' `kind`: of width `width`, or, given target_params, of the smallest
    width whose core has that many parameters."""
    build = next(b for k, _, b in MODELS if k == kind)
    return common.make_symbol_model(build, depth, width, symbols + 2, symbols, target_params,
                                    seed)


def train(model, length: int, symbols: int, steps: int, batch_size: int, seed: int, lr: float,
          eval_every: int, device="cpu"):
    """common.train_symbols on this task: the curve [(samples, whole-sequence accuracy)], the
    samples to 99% (or None), the median ms per step and the training losses."""
    return common.train_symbols(model, lambda size, g: batch(length, symbols, size, g), steps,
                                batch_size, seed, lr, eval_every, device)


def main(argv=None) -> int:
    parser = common.parser(__doc__, "8 symbols out of 10, one seed, CPU-sized")
    args = parser.parse_args(argv)
    device = common.setup(args)
    quick = args.quick
    # N symbols of an alphabet of S; the model's width; the training budget
    length, symbols, width, steps = (8, 10, 64, 4000) if quick else (20, 64, 128, 20000)
    seeds = args.seeds or (1 if quick else 3)
    batch_size, lr, eval_every = 32, 3e-3, 100
    depths = (1, 3) if quick else (1, 3, 5)

    runs = common.run_symbol_models(MODELS, depths, width, symbols + 2, symbols,
                                    lambda size, g: batch(length, symbols, size, g), steps,
                                    batch_size, seeds, lr, eval_every, device)
    summary = common.summarize(runs)
    budget = steps * batch_size
    print(f"\nmemorization of {length} symbols out of {symbols}, batch {batch_size}, budget "
          f"{budget:,} samples, {common.device_name(device)}")
    print(common.symbol_table(summary, budget))

    stem = "memorization" + ("-quick" if quick else "")
    path = common.write_json(args.out, stem, dict(
        task="memorization", length=length, symbols=symbols, batch=batch_size, steps=steps,
        lr=lr, width=width, **common.provenance(__file__, argv, device), summary=summary,
        runs=runs))
    plt = common.pyplot()
    if plt is not None:
        common.plot_curves(plt, runs, f"memorization of {length} symbols out of {symbols}",
                           "whole-sequence accuracy", os.path.join(args.out, stem + ".png"))
    print(f"wrote {path} and its plot")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
