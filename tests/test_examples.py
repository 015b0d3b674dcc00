"""The examples' quickest smoke test: a few training steps of each model they compare, on the
CPU, with a falling loss and finite outputs (the committed results come from their own runs)."""
import math
import pathlib
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "examples"))
import addition  # noqa: E402


@pytest.mark.parametrize("kind,depth", [("tlstm", 1), ("tlstm", 3), ("lstm", 2)])
def test_addition_trains(kind, depth):
    torch.manual_seed(0)
    target = addition.params(addition.make_model("tlstm", 3, 16).core)
    model = addition.make_model(kind, depth, 16, target if kind == "lstm" else None)
    curve, _, ms, losses = addition.train(model, digits=2, steps=60, batch_size=16, seed=0,
                                          lr=1e-2, eval_every=60)
    assert all(math.isfinite(v) for v in losses) and ms > 0
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first, (first, last)
    assert 0.0 <= curve[-1][1] <= 1.0
