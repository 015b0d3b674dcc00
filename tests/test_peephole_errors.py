"""Bad arguments raise what nn.LSTM raises: same exception type and the same message.

Both modules run on the same bad input; where nn.LSTM's own message is poor, ours must at least
be clear (name the hidden state and both dtypes / sizes). With a GPU also tensors on two
devices."""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import tlstm
from helpers import cuda_param


def _outcome(fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the point is to compare whatever is raised
        return type(exc), str(exc)
    return None


def _assert_same_error(make_call):
    """make_call(module) runs the bad call; nn.LSTM's and both of ours must raise the same."""
    torch.manual_seed(0)
    lstm_outcome = _outcome(lambda: make_call("lstm"))
    assert lstm_outcome is not None, "nn.LSTM accepted the input: the test is wrong"
    for kind in ("fused", "reference"):
        ours = _outcome(lambda: make_call(kind))
        assert ours is not None, f"{kind} accepted a bad input; nn.LSTM raised {lstm_outcome}"
        assert ours[0] is lstm_outcome[0], (kind, ours, lstm_outcome)
        assert ours[1] == lstm_outcome[1], (kind, ours[1], lstm_outcome[1])
    return lstm_outcome


def _module(kind, *args, **kwargs):
    cls = {"lstm": nn.LSTM, "fused": tlstm.PeepholeLSTM,
           "reference": tlstm.reference.PeepholeLSTM}[kind]
    return cls(*args, **kwargs)


# (name, module kwargs, input, hx, expected message or None)
FORWARD_CASES = [
    ("4d_input", {}, lambda: torch.randn(2, 3, 1, 4), None,
     "LSTM: Expected input to be 2D or 3D, got 4D instead"),
    ("1d_input", {}, lambda: torch.randn(4), None,
     "LSTM: Expected input to be 2D or 3D, got 1D instead"),
    ("input_size", {}, lambda: torch.randn(2, 3, 7), None,
     "input.size(-1) must be equal to input_size. Expected 4, got 7"),
    ("input_size_unbatched", {}, lambda: torch.randn(2, 7), None,
     "input.size(-1) must be equal to input_size. Expected 4, got 7"),
    ("hidden0_batch", {}, lambda: torch.randn(2, 2, 4),
     lambda: (torch.randn(1, 7, 5), torch.randn(1, 2, 5)),
     "Expected hidden[0] size (1, 2, 5), got [1, 7, 5]"),
    ("hidden1_size", {}, lambda: torch.randn(2, 2, 4),
     lambda: (torch.randn(1, 2, 5), torch.randn(1, 2, 6)),
     "Expected hidden[1] size (1, 2, 5), got [1, 2, 6]"),
    ("hidden0_layers", dict(num_layers=2, bidirectional=True), lambda: torch.randn(2, 2, 4),
     lambda: (torch.randn(2, 2, 5), torch.randn(4, 2, 5)),
     "Expected hidden[0] size (4, 2, 5), got [2, 2, 5]"),
    ("hidden0_proj", dict(proj_size=3), lambda: torch.randn(2, 2, 4),
     lambda: (torch.randn(1, 2, 5), torch.randn(1, 2, 5)),
     "Expected hidden[0] size (1, 2, 3), got [1, 2, 5]"),
    ("hidden1_proj", dict(proj_size=3), lambda: torch.randn(2, 2, 4),
     lambda: (torch.randn(1, 2, 3), torch.randn(1, 2, 3)),
     "Expected hidden[1] size (1, 2, 5), got [1, 2, 3]"),
    ("hidden_batch_first", dict(batch_first=True), lambda: torch.randn(3, 2, 4),
     lambda: (torch.randn(1, 2, 5), torch.randn(1, 3, 5)),
     "Expected hidden[0] size (1, 3, 5), got [1, 2, 5]"),
    ("input_dtype_f64", {}, lambda: torch.randn(2, 2, 4, dtype=torch.float64), None, None),
    ("input_dtype_f16", {}, lambda: torch.randn(2, 2, 4).half(), None, None),
    ("input_dtype_int", {}, lambda: torch.ones(2, 2, 4, dtype=torch.int64), None, None),
    ("model_f64_input_f32", dict(dtype=torch.float64), lambda: torch.randn(2, 2, 4), None, None),
    ("3d_input_2d_hx", {}, lambda: torch.randn(2, 2, 4),
     lambda: (torch.randn(2, 5), torch.randn(2, 5)),
     "For batched 3-D input, hx and cx should also be 3-D but got (2-D, 2-D) tensors"),
    ("2d_input_3d_hx", {}, lambda: torch.randn(2, 4),
     lambda: (torch.randn(1, 1, 5), torch.randn(1, 1, 5)),
     "For unbatched 2-D input, hx and cx should also be 2-D but got (3-D, 3-D) tensors"),
    ("2d_input_mixed_hx", {}, lambda: torch.randn(2, 4),
     lambda: (torch.randn(1, 5), torch.randn(1, 1, 5)), None),
    ("2d_input_wrong_hx_size", {}, lambda: torch.randn(2, 4),
     lambda: (torch.randn(1, 6), torch.randn(1, 5)), None),
    ("empty_sequence", {}, lambda: torch.randn(0, 2, 4), None,
     "Expected sequence length to be larger than 0 in RNN"),
    ("empty_sequence_batch_first", dict(batch_first=True), lambda: torch.randn(2, 0, 4), None,
     "Expected sequence length to be larger than 0 in RNN"),
    ("empty_sequence_unbatched", {}, lambda: torch.randn(0, 4), None,
     "Expected sequence length to be larger than 0 in RNN"),
    ("input_on_meta", {}, lambda: torch.randn(2, 2, 4, device="meta"), None,
     "Input and parameter tensors are not at the same device, found input tensor at meta and "
     "parameter tensor at cpu"),
    ("hidden_on_meta", {}, lambda: torch.randn(2, 2, 4),
     lambda: (torch.randn(1, 2, 5, device="meta"), torch.randn(1, 2, 5)),
     "Input and hidden tensors are not at the same device, found input tensor at cpu and "
     "hidden tensor at meta"),
    ("hx_one_tensor", {}, lambda: torch.randn(2, 2, 4), lambda: (torch.randn(1, 2, 5),), None),
    ("hx_three_tensors", {}, lambda: torch.randn(2, 2, 4),
     lambda: (torch.randn(1, 2, 5), torch.randn(1, 2, 5), torch.randn(1, 2, 5)),
     "lstm expects two hidden states"),
]


@pytest.mark.parametrize("case", FORWARD_CASES, ids=[c[0] for c in FORWARD_CASES])
def test_forward_errors_match_nn_lstm(case):
    _, kwargs, make_input, make_hx, expected = case
    x = make_input()
    hx = make_hx() if make_hx is not None else None

    def call(kind):
        module = _module(kind, 4, 5, **kwargs)
        return module(x, hx)

    exc_type, msg = _assert_same_error(call)
    if expected is not None:
        assert msg == expected


def test_packed_wrong_hidden_size_is_clear():
    """nn.LSTM says 'got an incorrect number of RNN parameters' here; ours gives the message
    nn.LSTM gives for padded input."""
    x = torch.randn(4, 3, 4)
    packed = pack_padded_sequence(x, torch.tensor([2, 4, 3]), enforce_sorted=False)
    hx = (torch.randn(1, 3, 6), torch.randn(1, 3, 5))
    with pytest.raises(RuntimeError) as padded_exc:
        nn.LSTM(4, 5)(x, hx)
    for kind in ("fused", "reference"):
        with pytest.raises(RuntimeError) as exc:
            _module(kind, 4, 5)(packed, hx)
        assert str(exc.value) == str(padded_exc.value)
        assert str(exc.value) == "Expected hidden[0] size (1, 3, 5), got [1, 3, 6]"


@pytest.mark.parametrize("hx_batch", [1, 4])
@pytest.mark.parametrize("which", [0, 1])
def test_packed_wrong_hidden_batch_is_clear(hx_batch, which):
    """nn.LSTM answers this with an indexing error or silently drops rows; ours must name the
    hidden state and the expected and actual sizes."""
    packed = pack_padded_sequence(torch.randn(4, 3, 4), torch.tensor([2, 4, 3]),
                                  enforce_sorted=False)
    shapes = [(1, 3, 5), (1, 3, 5)]
    shapes[which] = (1, hx_batch, 5)
    hx = tuple(torch.randn(s) for s in shapes)
    for kind in ("fused", "reference"):
        with pytest.raises(RuntimeError) as exc:
            _module(kind, 4, 5)(packed, hx)
        msg = str(exc.value)
        assert f"hidden[{which}]" in msg, msg
        assert "(1, 3, 5)" in msg and f"[1, {hx_batch}, 5]" in msg, msg


@pytest.mark.parametrize("which", [0, 1])
def test_hidden_dtype_mismatch_is_clear(which):
    """nn.LSTM says 'get_mkldnn_dtype: unsupported data type' here; ours names both dtypes."""
    hx = [torch.randn(1, 2, 5), torch.randn(1, 2, 5)]
    hx[which] = hx[which].double()
    for kind in ("fused", "reference"):
        with pytest.raises(RuntimeError) as exc:
            _module(kind, 4, 5)(torch.randn(3, 2, 4), tuple(hx))
        msg = str(exc.value)
        assert "hidden" in msg and "Float" in msg and "Double" in msg, msg


def test_packed_input_wrong_size_and_dtype_are_clear():
    """nn.LSTM fails inside a matmul here; ours names the problem."""
    for kind in ("fused", "reference"):
        packed = pack_padded_sequence(torch.randn(3, 2, 7), torch.tensor([3, 2]))
        with pytest.raises(RuntimeError, match="input_size. Expected 4, got 7"):
            _module(kind, 4, 5)(packed)
        packed = pack_padded_sequence(torch.randn(3, 2, 4, dtype=torch.float64),
                                      torch.tensor([3, 2]))
        with pytest.raises((RuntimeError, ValueError)) as exc:
            _module(kind, 4, 5)(packed)
        assert "float64" in str(exc.value) and "float32" in str(exc.value)


CONSTRUCTOR_CASES = [
    dict(dropout=1.5),
    dict(dropout=-0.1),
    dict(dropout=True),
    dict(hidden_size=0),
    dict(hidden_size=-1),
    dict(input_size=0),
    dict(num_layers=0),
    dict(proj_size=5),
    dict(proj_size=7),
    dict(proj_size=-1),
    dict(hidden_size=5.0),
    dict(input_size=4.0),
    dict(num_layers=1.5),
    dict(bias=1),
    dict(batch_first=1),
    dict(proj_size=2.0),
]


@pytest.mark.parametrize("kwargs", CONSTRUCTOR_CASES, ids=[str(c) for c in CONSTRUCTOR_CASES])
def test_constructor_errors_match_nn_lstm(kwargs):
    args = dict(input_size=4, hidden_size=5)
    args.update(kwargs)
    _assert_same_error(lambda kind: _module(kind, **args))


def test_dropout_warning_matches_nn_lstm():
    with pytest.warns(UserWarning) as lstm_w:
        nn.LSTM(4, 5, dropout=0.5)
    for cls in (tlstm.PeepholeLSTM, tlstm.reference.PeepholeLSTM):
        with pytest.warns(UserWarning) as ours:
            cls(4, 5, dropout=0.5)
        assert [str(w.message) for w in ours] == [str(w.message) for w in lstm_w]


def test_bad_activation():
    for cls in (tlstm.PeepholeLSTM, tlstm.reference.PeepholeLSTM):
        with pytest.raises(ValueError) as exc:
            cls(4, 5, activation="relu")
        msg = str(exc.value)
        assert "tanh" in msg and "identity" in msg and "relu" in msg, msg


@pytest.mark.parametrize("hx", [torch.randn(2, 1, 2, 5), torch.randn(1, 2, 5)],
                         ids=["stacked_4d", "only_h_0"])
def test_hx_as_a_single_tensor_is_a_clear_type_error(hx):
    """nn.LSTM raises a TypeError listing lstm()'s overloads (or, for a 4-D tensor it can
    unpack, runs); ours names hx and the shape it got."""
    x = torch.randn(3, 2, 4)
    for kind in ("fused", "reference"):
        with pytest.raises(TypeError) as exc:
            _module(kind, 4, 5)(x, hx)
        assert str(exc.value) == (
            f"hx must be a tuple (h_0, c_0) of two tensors, got a single tensor of shape "
            f"{list(hx.shape)}"
        )


# ---- tensors on two devices (CUDA only) -------------------------------------------------------

ON_CUDA = pytest.mark.parametrize("device", [cuda_param()], indirect=True)


def _same_error_as_nn_lstm(fn_lstm, fn_ours):
    lstm_outcome, our_outcome = _outcome(fn_lstm), _outcome(fn_ours)
    assert lstm_outcome is not None, "nn.LSTM accepted the input: the test is wrong"
    assert our_outcome == lstm_outcome


@ON_CUDA
def test_cpu_input_cuda_module_error_matches_nn_lstm(device):
    lstm, ours = nn.LSTM(4, 5).to(device), tlstm.PeepholeLSTM(4, 5).to(device)
    x = torch.randn(3, 2, 4)
    _same_error_as_nn_lstm(lambda: lstm(x), lambda: ours(x))


@ON_CUDA
def test_cuda_input_cpu_module_error_matches_nn_lstm(device):
    lstm, ours = nn.LSTM(4, 5), tlstm.PeepholeLSTM(4, 5)
    x = torch.randn(3, 2, 4, device=device)
    _same_error_as_nn_lstm(lambda: lstm(x), lambda: ours(x))


@ON_CUDA
def test_hidden_on_other_device_error_matches_nn_lstm(device):
    lstm, ours = nn.LSTM(4, 5).to(device), tlstm.PeepholeLSTM(4, 5).to(device)
    x = torch.randn(3, 2, 4, device=device)
    hx = (torch.randn(1, 2, 5), torch.randn(1, 2, 5, device=device))
    _same_error_as_nn_lstm(lambda: lstm(x, hx), lambda: ours(x, hx))
