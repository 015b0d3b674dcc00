"""The examples' quickest smoke test: a few training steps of each model they compare, on the
CPU, with a falling loss and finite outputs (the committed results come from their own runs)."""
import json
import math
import pathlib
import sys

import pytest
import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "examples"))
import addition  # noqa: E402
import classic_lstm  # noqa: E402
import common  # noqa: E402
import memorization  # noqa: E402
import sequential_digits  # noqa: E402


def falls(losses, window=10):
    assert all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:window]) / window, sum(losses[-window:]) / window
    assert last < first, (first, last)


@pytest.mark.parametrize("kind,depth", [("tlstm", 1), ("tlstm", 3), ("lstm", 2)])
def test_addition_trains(kind, depth):
    torch.manual_seed(0)
    target = addition.params(addition.make_model("tlstm", 3, 16).core)
    model = addition.make_model(kind, depth, 16, target if kind == "lstm" else None)
    curve, _, ms, losses = addition.train(model, digits=2, steps=60, batch_size=16, seed=0,
                                          lr=1e-2, eval_every=60)
    assert ms > 0
    falls(losses)
    assert 0.0 <= curve[-1][1] <= 1.0


def test_addition_batch_holds_the_sums():
    x, y = addition.batch(3, 50, torch.Generator().manual_seed(0))
    a = sum(x[k] * 10 ** k for k in range(3))
    b = sum(x[4 + k] * 10 ** k for k in range(3))
    assert torch.equal(sum(y[k] * 10 ** k for k in range(4)), a + b)
    assert (x[3] == addition.SEP).all() and (x[-4:] == addition.BLANK).all()


@pytest.mark.parametrize("kind,depth", [("tlstm", 3), ("lstm", 2)])
def test_memorization_trains(kind, depth):
    target = common.params(memorization.make_model("tlstm", 3, 16, 4).core)
    model = memorization.make_model(kind, depth, 16, 4, target if kind == "lstm" else None)
    curve, _, ms, losses = memorization.train(model, length=3, symbols=4, steps=80,
                                              batch_size=16, seed=0, lr=1e-2, eval_every=80)
    assert ms > 0
    falls(losses)
    assert 0.0 <= curve[-1][1] <= 1.0
    with torch.no_grad():
        x, _ = memorization.batch(3, 4, 5, torch.Generator().manual_seed(1))
        assert torch.isfinite(model(x)).all()


def test_memorization_batch_asks_for_the_sequence_back():
    x, y = memorization.batch(4, 6, 10, torch.Generator().manual_seed(0))
    assert x.shape == (9, 10) and y.shape == (4, 10)
    assert torch.equal(x[:4], y) and (x[4] == 6).all() and (x[5:] == 7).all()


def test_matched_widths_reach_the_target_and_no_more():
    target = common.params(memorization.make_model("tlstm", 3, 32, 8).core)
    model = memorization.make_model("lstm", 2, 32, 8, target)
    hidden = model.core.hidden_size
    assert common.params(model.core) >= target
    assert common.params(nn.LSTM(32, hidden - 1, num_layers=2)) < target


def test_a_model_that_cannot_be_built_is_skipped_with_a_note(capsys):
    def build():
        raise NotImplementedError("not yet\nmore")
    assert common.try_build("3-D TensorizedLSTM L=3", build) is None
    note = capsys.readouterr().out
    assert "skipping 3-D TensorizedLSTM L=3: NotImplementedError: not yet" in note
    assert common.try_build("x", lambda: nn.Linear(1, 1)) is not None


def test_the_3d_entries_are_built_or_skipped(capsys):
    """Each symbol task lists the 3-D tLSTM; with this tlstm it is either built (and runs) or
    skipped with a note, never an error."""
    for module in (addition, memorization):
        runs = common.run_symbol_models(
            [m for m in module.MODELS if m[0] in ("tlstm", "tlstm3d")], (2,), 8, 5, 3,
            lambda size, g: memorization.batch(2, 3, size, g), steps=2, batch_size=4, seeds=1,
            lr=1e-2, eval_every=2, device="cpu")
        names = [r["model"] for r in runs]
        assert "TensorizedLSTM L=2" in names
        assert "3-D TensorizedLSTM L=2" in names or "skipping 3-D TensorizedLSTM L=2" in \
            capsys.readouterr().out


def test_provenance_names_the_commit_device_and_command():
    p = common.provenance("examples/memorization.py", ["--quick"], torch.device("cpu"))
    assert p["command"] == "python examples/memorization.py --quick"
    assert p["commit"] and p["device"] and p["threads"] == torch.get_num_threads()
    assert p["tlstm"] == "this checkout"  # conftest puts the checkout first on the path
    json.dumps(p)


@pytest.mark.parametrize("kind,depth", [("tlstm", 2), ("lstm", 1), ("peephole", 1)])
def test_sequential_digits_trains(kind, depth):
    pytest.importorskip("sklearn")
    train_x, train_y, test_x, test_y = sequential_digits.load_digits()
    assert train_x.shape == (1437, 64) and test_x.shape == (360, 64)
    assert 0 <= train_x.min() and train_x.max() <= 1 and set(train_y.tolist()) == set(range(10))
    data = (train_x[:96], train_y[:96], test_x[:64], test_y[:64])
    target = common.params(sequential_digits.make_model("tlstm", 2, 8).core)
    model = sequential_digits.make_model(kind, depth, 8, target if kind != "tlstm" else None)
    curve, train_acc, ms, losses = sequential_digits.train(
        model, data, sequential_digits.permutation(), epochs=6, batch_size=32, seed=0, lr=2e-2)
    assert len(curve) == 6 and 0 <= train_acc <= 1 and ms > 0
    falls(losses, window=3)


def test_the_digits_permutation_is_fixed():
    order = sequential_digits.permutation()
    assert sorted(order.tolist()) == list(range(64))
    assert torch.equal(order, sequential_digits.permutation())


def test_sine_model_has_8_parameters_and_trains():
    model = classic_lstm.OneUnit(classic_lstm.SINE_MODELS[0][1]())
    assert common.params(model) == 8
    losses, ms = classic_lstm.fit(
        model, lambda size, g: classic_lstm.sine_batch(30, size, g)[:2], nn.MSELoss(), 60, 16,
        0, 2e-2)
    assert ms > 0
    falls(losses)


def test_forget_bias_is_the_one_liner_on_both_lstms():
    for lstm in (nn.LSTM(2, 3), classic_lstm.tlstm.PeepholeLSTM(2, 3)):
        before = lstm.bias_hh_l0.detach().clone()
        classic_lstm.forget_bias(lstm, 1.0)
        assert torch.equal(lstm.bias_hh_l0[3:6], torch.ones(3))
        assert torch.equal(lstm.bias_hh_l0[:3], before[:3])
        assert torch.equal(lstm.bias_hh_l0[6:], before[6:])


@pytest.mark.parametrize("name", [n for n, _ in classic_lstm.LATCH_MODELS])
def test_latching_models_train(name):
    build = dict(classic_lstm.LATCH_MODELS)[name]
    torch.manual_seed(0)
    model = classic_lstm.OneUnit(build(), nn.Linear(1, 1))
    loss = nn.BCEWithLogitsLoss()
    losses, _ = classic_lstm.fit(model, lambda size, g: classic_lstm.latch_batch(5, size, g),
                                 lambda out, label: loss(out[-1, :, 0], label), 80, 32, 0, 3e-2)
    falls(losses)
    x, label = classic_lstm.latch_batch(5, 64, torch.Generator().manual_seed(1))
    assert 0 <= classic_lstm.latch_accuracy(model, x, label) <= 1


@pytest.mark.parametrize("name", [n for n, _ in classic_lstm.TIMING_MODELS])
def test_timing_models_train(name):
    build = dict(classic_lstm.TIMING_MODELS)[name]
    torch.manual_seed(0)
    model = classic_lstm.OneUnit(build(), nn.Linear(1, 1))
    loss = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(11.0))
    losses, _ = classic_lstm.fit(model, lambda size, g: classic_lstm.timing_batch(4, size, g),
                                 loss, 80, 32, 0, 2e-2)
    falls(losses)
    x, y = classic_lstm.timing_batch(4, 20, torch.Generator().manual_seed(1))
    assert x.sum() == 20 and y.sum() == 20 and x.shape == (12, 20, 1)
    assert torch.equal(x.squeeze(-1).argmax(0) + 4, y.squeeze(-1).argmax(0))
    assert 0 <= classic_lstm.timing_accuracy(model, x, y) <= 1
