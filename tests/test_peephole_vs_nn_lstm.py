"""tlstm.PeepholeLSTM against torch.nn.LSTM: peephole=False (and zero peepholes) compute exactly
nn.LSTM; state_dict loading, from_lstm and same-seed initialisation follow the API contract."""
import pytest
import torch
from torch import nn

import tlstm
from helpers import (
    TOL,
    assert_results_close,
    peephole_forward_backward,
    make_peephole_inputs,
    randomize_,
    rel_err,
)

LSTM_CONFIGS = {
    "base": (dict(input_size=3, hidden_size=5), 6, 4, None),
    "proj": (dict(input_size=3, hidden_size=6, proj_size=2), 5, 3, None),
    "bidir": (dict(input_size=3, hidden_size=5, bidirectional=True), 6, 4, None),
    "two_layers": (dict(input_size=3, hidden_size=5, num_layers=2), 5, 3, None),
    "batch_first_no_bias": (dict(input_size=2, hidden_size=4, batch_first=True, bias=False),
                            5, 3, None),
    "packed": (dict(input_size=3, hidden_size=5), 6, 4, [3, 6, 1, 4]),
    "packed_batch_first_bidir_two_layers_proj": (
        dict(input_size=3, hidden_size=6, batch_first=True, bidirectional=True, num_layers=2,
             proj_size=3), 6, 4, [6, 2, 5, 4]),
    "threaded_bidir_packed": (dict(input_size=6, hidden_size=72, bidirectional=True), 4, 40,
                              [(b % 4) + 1 for b in range(40)]),
}


def _lstm(seed, dtype=torch.float64, **kwargs):
    lstm = nn.LSTM(dtype=dtype, **kwargs)
    randomize_(lstm, seed)
    return lstm


def _compare_with_lstm(module, lstm, T, B, lengths, dtype, seed):
    x, hx = make_peephole_inputs(module, T, B, seed, dtype)
    got = peephole_forward_backward(module, x, hx, lengths=lengths, seed=seed + 1)
    x64 = x.detach().double().requires_grad_()
    hx64 = tuple(h.detach().double().requires_grad_() for h in hx)
    want = peephole_forward_backward(lstm, x64, hx64, lengths=lengths, seed=seed + 1)
    # the peephole module has three more parameters per layer-direction; their gradients are
    # checked against the reference elsewhere: here compare what nn.LSTM has
    extra = {k for k in got if k.startswith(("grad_weight_ci", "grad_weight_cf", "grad_weight_co"))}
    assert set(got) - extra == set(want)
    assert_results_close({k: got[k] for k in want}, want, TOL[dtype], context=str(lengths))
    return got


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", list(LSTM_CONFIGS))
def test_peephole_false_equals_nn_lstm(case, dtype):
    kwargs, T, B, lengths = LSTM_CONFIGS[case]
    lstm = _lstm(1, **kwargs)  # float64 ground truth
    module = tlstm.PeepholeLSTM(peephole=False, dtype=dtype, **kwargs)
    module.load_state_dict(lstm.state_dict(), strict=True)
    assert not any("weight_c" in n for n, _ in module.named_parameters())
    _compare_with_lstm(module, lstm, T, B, lengths, dtype, seed=21)


@pytest.mark.parametrize("case", ["base", "packed_batch_first_bidir_two_layers_proj"])
def test_zero_peepholes_equal_nn_lstm(case):
    """peephole=True with all peephole weights zero is exactly nn.LSTM's cell."""
    kwargs, T, B, lengths = LSTM_CONFIGS[case]
    lstm = _lstm(2, **kwargs)
    module = tlstm.PeepholeLSTM(dtype=torch.float64, **kwargs)
    randomize_(module, 99)  # non-zero peepholes first: loading must zero them
    module.load_state_dict(lstm.state_dict(), strict=True)
    for name, p in module.named_parameters():
        if name.startswith(("weight_ci", "weight_cf", "weight_co")):
            assert torch.equal(p, torch.zeros_like(p)), name
        else:
            assert torch.equal(p, lstm.get_parameter(name)), name
    _compare_with_lstm(module, lstm, T, B, lengths, torch.float64, seed=31)


def test_output_structure_matches_nn_lstm():
    """Same output types, shapes and dtypes as nn.LSTM for several input layouts."""
    for kwargs, T, B, lengths in LSTM_CONFIGS.values():
        lstm = _lstm(3, **kwargs)
        module = tlstm.PeepholeLSTM(dtype=torch.float64, **kwargs)
        x, hx = make_peephole_inputs(module, T, B, 4, torch.float64)
        for hx_arg in (None, hx):
            if lengths is not None:
                from helpers import pack

                inp = pack(x, lengths, kwargs.get("batch_first", False))
            else:
                inp = x
            o1, (h1, c1) = module(inp, hx_arg)
            o2, (h2, c2) = lstm(inp, hx_arg)
            assert type(o1) is type(o2)
            if lengths is not None:
                assert torch.equal(o1.batch_sizes, o2.batch_sizes)
                assert torch.equal(o1.sorted_indices, o2.sorted_indices)
                assert torch.equal(o1.unsorted_indices, o2.unsorted_indices)
                o1, o2 = o1.data, o2.data
            for a, b in ((o1, o2), (h1, h2), (c1, c2)):
                assert a.shape == b.shape and a.dtype == b.dtype and a.device == b.device


# ---- state_dict ---------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [
    dict(input_size=3, hidden_size=5),
    dict(input_size=3, hidden_size=6, num_layers=2, bidirectional=True, proj_size=2),
    dict(input_size=3, hidden_size=5, bias=False, bidirectional=True),
])
def test_state_dict_keys(kwargs):
    lstm = nn.LSTM(**kwargs)
    plain = tlstm.PeepholeLSTM(peephole=False, **kwargs)
    assert list(plain.state_dict()) == list(lstm.state_dict())
    peep = tlstm.PeepholeLSTM(**kwargs)
    keys = list(peep.state_dict())
    extra = [k for k in keys if k not in lstm.state_dict()]
    d = 2 if kwargs.get("bidirectional") else 1
    expected_extra = {
        f"weight_{g}_l{layer}{'_reverse' if direction else ''}"
        for layer in range(kwargs.get("num_layers", 1)) for direction in range(d)
        for g in ("ci", "cf", "co")
    }
    assert set(extra) == expected_extra
    assert [k for k in keys if k in lstm.state_dict()] == list(lstm.state_dict())
    for name in expected_extra:
        assert peep.get_parameter(name).shape == (kwargs["hidden_size"],)
    for name, t in lstm.state_dict().items():
        assert peep.state_dict()[name].shape == t.shape


def test_state_dict_round_trip_between_fused_and_reference():
    kwargs = dict(input_size=3, hidden_size=5, num_layers=2, bidirectional=True, proj_size=2)
    a = tlstm.PeepholeLSTM(**kwargs)
    randomize_(a, 4)
    b = tlstm.reference.PeepholeLSTM(**kwargs)
    b.load_state_dict(a.state_dict(), strict=True)
    c = tlstm.PeepholeLSTM(**kwargs)
    c.load_state_dict(b.state_dict(), strict=True)
    for (n1, p1), (n3, p3) in zip(a.named_parameters(), c.named_parameters()):
        assert n1 == n3 and torch.equal(p1, p3)


def test_partial_peephole_state_dict_is_reported():
    """A state_dict holding only some of the peephole weights is not silently completed."""
    module = tlstm.PeepholeLSTM(3, 5)
    sd = module.state_dict()
    del sd["weight_cf_l0"]
    with pytest.raises(RuntimeError, match="weight_cf_l0"):
        tlstm.PeepholeLSTM(3, 5).load_state_dict(sd, strict=True)


def test_peephole_false_rejects_peephole_state_dict():
    sd = tlstm.PeepholeLSTM(3, 5).state_dict()
    with pytest.raises(RuntimeError, match="weight_ci_l0"):
        tlstm.PeepholeLSTM(3, 5, peephole=False).load_state_dict(sd, strict=True)


def test_nn_lstm_loads_non_strict_too():
    lstm = _lstm(5, input_size=3, hidden_size=5)
    module = tlstm.PeepholeLSTM(3, 5, dtype=torch.float64)
    result = module.load_state_dict(lstm.state_dict(), strict=False)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(module.weight_co_l0, torch.zeros(5, dtype=torch.float64))


def test_loading_nn_lstm_does_not_modify_its_state_dict():
    lstm = _lstm(5, input_size=3, hidden_size=5)
    sd = lstm.state_dict()
    keys = list(sd)
    tlstm.PeepholeLSTM(3, 5, dtype=torch.float64).load_state_dict(sd)
    assert list(sd) == keys


# ---- from_lstm ----------------------------------------------------------------------------


@pytest.mark.parametrize("peephole", [True, False])
@pytest.mark.parametrize("case", ["base", "proj", "packed_batch_first_bidir_two_layers_proj",
                                  "batch_first_no_bias"])
def test_from_lstm(case, peephole):
    kwargs, T, B, lengths = LSTM_CONFIGS[case]
    lstm = _lstm(6, **kwargs)
    lstm.eval()
    module = tlstm.PeepholeLSTM.from_lstm(lstm, peephole=peephole)
    assert isinstance(module, tlstm.PeepholeLSTM)
    for attr in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                 "bidirectional", "proj_size"):
        assert getattr(module, attr) == getattr(lstm, attr), attr
    assert module.peephole is peephole
    assert module.training is False
    for name, p in lstm.named_parameters():
        q = module.get_parameter(name)
        assert torch.equal(q, p) and q.dtype == p.dtype
    _compare_with_lstm(module, lstm, T, B, lengths, torch.float64, seed=41)


def test_from_lstm_keeps_training_mode_dtype_and_dropout():
    lstm = nn.LSTM(3, 5, num_layers=2, dropout=0.25, dtype=torch.float64)
    module = tlstm.PeepholeLSTM.from_lstm(lstm)
    assert module.training is True
    assert module.dropout == 0.25
    assert module.weight_ih_l0.dtype == torch.float64
    assert module.weight_ci_l1.dtype == torch.float64
    # the new module owns its parameters: training it does not change the LSTM
    with torch.no_grad():
        module.weight_ih_l0.add_(1.0)
    assert not torch.equal(module.weight_ih_l0, lstm.weight_ih_l0)


# ---- same seed, same weights ---------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [
    dict(input_size=3, hidden_size=5),
    dict(input_size=4, hidden_size=7, num_layers=2, bidirectional=True, proj_size=3),
    dict(input_size=4, hidden_size=6, bias=False, num_layers=3),
])
@pytest.mark.parametrize("peephole", [True, False])
@pytest.mark.parametrize("cls", [tlstm.PeepholeLSTM, tlstm.reference.PeepholeLSTM],
                         ids=["fused", "reference"])
def test_same_seed_same_weights_as_nn_lstm(kwargs, peephole, cls):
    torch.manual_seed(123)
    lstm = nn.LSTM(**kwargs)
    torch.manual_seed(123)
    module = cls(peephole=peephole, **kwargs)
    lstm_params = dict(lstm.named_parameters())
    for name, p in lstm_params.items():
        assert torch.equal(module.get_parameter(name), p), name
    peephole_params = [n for n, _ in module.named_parameters() if n not in lstm_params]
    assert bool(peephole_params) == peephole
    hidden = kwargs["hidden_size"]
    bound = 1.0 / hidden ** 0.5
    for n in peephole_params:
        p = module.get_parameter(n)
        # initialised like every other weight: U(-1/sqrt(H), 1/sqrt(H)), not all zero
        assert p.abs().max() <= bound and p.abs().sum() > 0, n


def test_packed_enforce_sorted_equals_nn_lstm():
    """Sorted packed input (enforce_sorted=True: no sorted/unsorted indices)."""
    from torch.nn.utils.rnn import pack_padded_sequence

    kwargs = dict(input_size=3, hidden_size=5, bidirectional=True, num_layers=2)
    lstm = _lstm(7, **kwargs)
    module = tlstm.PeepholeLSTM.from_lstm(lstm)
    x, hx = make_peephole_inputs(module, 6, 4, 8, torch.float64)
    lengths = torch.tensor([6, 5, 3, 1])
    results = []
    for m in (module, lstm):
        packed = pack_padded_sequence(x, lengths, enforce_sorted=True)
        out, (h, c) = m(packed, hx)
        assert out.sorted_indices is None
        loss = (out.data * torch.linspace(-1, 1, out.data.numel(), dtype=torch.float64)
                .view_as(out.data)).sum() + (h * 0.3).sum() - (c * 0.7).sum()
        results.append([out.data, h, c, *torch.autograd.grad(loss, [x, *hx, lstm.weight_hh_l1
                                                                    if m is lstm else
                                                                    m.weight_hh_l1])])
    for a, b in zip(*results):
        assert rel_err(a, b) <= TOL[torch.float64]


@pytest.mark.parametrize("cls", [tlstm.PeepholeLSTM, tlstm.TensorizedLSTM])
def test_flatten_parameters_is_there_and_changes_nothing(cls):
    """Training scripts written for nn.LSTM call flatten_parameters() before every forward."""
    args = (3, 4, 2)
    module = cls(*args)
    x = torch.randn(5, 2, 3)
    before = module(x)[0]
    params = [p.clone() for p in module.parameters()]
    assert module.flatten_parameters() is None
    assert all(torch.equal(p, q) for p, q in zip(module.parameters(), params))
    assert torch.equal(module(x)[0], before)
