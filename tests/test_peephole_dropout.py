"""Inter-layer dropout follows nn.LSTM's semantics (after every layer but the last, in training
mode only), identically in the fused module and the reference."""
import pytest
import torch

import tlstm
from helpers import (
    TOL,
    assert_results_close,
    peephole_forward_backward,
    make_peephole_inputs,
    randomize_,
    rel_err,
)

KWARGS = dict(input_size=3, hidden_size=6, num_layers=3, bidirectional=True, proj_size=2)


def _pair(dropout, dtype=torch.float64):
    with_dropout = tlstm.PeepholeLSTM(dropout=dropout, dtype=dtype, **KWARGS)
    randomize_(with_dropout, 3)
    without = tlstm.PeepholeLSTM(dropout=0.0, dtype=dtype, **KWARGS)
    without.load_state_dict(with_dropout.state_dict())
    return with_dropout, without


@pytest.mark.parametrize("lengths", [None, [5, 2, 4, 1]])
def test_eval_mode_equals_no_dropout(lengths):
    m, plain = _pair(0.5)
    m.eval()
    plain.train()  # dropout 0: mode does not matter
    x, hx = make_peephole_inputs(m, 5, 4, 1, torch.float64)
    assert_results_close(peephole_forward_backward(m, x, hx, lengths=lengths, seed=2),
                         peephole_forward_backward(plain, x, hx, lengths=lengths, seed=2),
                         TOL[torch.float64])


def test_train_mode_differs_from_eval():
    m, _ = _pair(0.5)
    x, hx = make_peephole_inputs(m, 5, 4, 1, torch.float64)
    m.eval()
    eval_out = peephole_forward_backward(m, x, hx, seed=2)
    m.train()
    torch.manual_seed(0)
    train_out = peephole_forward_backward(m, x, hx, seed=2)
    assert rel_err(train_out["output"], eval_out["output"]) > 1e-3
    # and two training runs draw different masks
    torch.manual_seed(1)
    other = peephole_forward_backward(m, x, hx, seed=2)
    assert rel_err(other["output"], train_out["output"]) > 1e-3


@pytest.mark.parametrize("lengths", [None, [5, 2, 4, 1]])
def test_train_mode_matches_reference_with_same_rng(lengths):
    """With the same RNG state, fused and reference draw the same masks: same results."""
    m, _ = _pair(0.4)
    ref = tlstm.reference.PeepholeLSTM(dropout=0.4, dtype=torch.float64, **KWARGS)
    ref.load_state_dict(m.state_dict())
    m.train()
    ref.train()
    x, hx = make_peephole_inputs(m, 5, 4, 1, torch.float64)
    torch.manual_seed(5)
    got = peephole_forward_backward(m, x, hx, lengths=lengths, seed=2)
    torch.manual_seed(5)
    want = peephole_forward_backward(ref, x, hx, lengths=lengths, seed=2)
    assert_results_close(got, want, TOL[torch.float64])


def test_no_dropout_after_last_layer():
    with pytest.warns(UserWarning):
        m = tlstm.PeepholeLSTM(3, 5, dropout=0.9, dtype=torch.float64)
    x, hx = make_peephole_inputs(m, 4, 3, 1, torch.float64)
    m.train()
    a = peephole_forward_backward(m, x, hx, seed=2)
    m.eval()
    b = peephole_forward_backward(m, x, hx, seed=2)
    assert_results_close(a, b, TOL[torch.float64])


def test_dropout_one_zeroes_inter_layer_input():
    """dropout=1 in training: layers 2.. see a zero input, as in nn.LSTM."""
    m, _ = _pair(1.0)
    m.train()
    x, hx = make_peephole_inputs(m, 4, 3, 1, torch.float64)
    out, (h, c) = m(x, hx)
    # layer 1 sees zero input for any x: the output does not depend on x
    out2, _ = m(torch.randn_like(x), hx)
    assert torch.equal(out, out2)
    lstm = torch.nn.LSTM(dropout=1.0, dtype=torch.float64,
                         **{k: v for k, v in KWARGS.items()})
    lstm.train()
    o1, _ = lstm(x.detach(), tuple(h.detach() for h in hx))
    o2, _ = lstm(torch.randn_like(x), tuple(h.detach() for h in hx))
    assert torch.equal(o1, o2)
