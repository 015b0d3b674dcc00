"""CUDA: the fused module on a GPU against the float64 reference on the CPU, and nn.LSTM's
device errors. Skipped without a GPU."""
import pytest
import torch
from torch import nn

if not torch.cuda.is_available():
    pytest.skip("CUDA is not available", allow_module_level=True)

import tlstm  # noqa: E402
from conftest import (  # noqa: E402
    TOL,
    assert_results_close,
    forward_backward,
    fused_and_reference,
    make_inputs,
)

CASES = {
    "base": (dict(input_size=3, hidden_size=5), 6, 4, None),
    "bidir_two_layers_proj_packed": (
        dict(input_size=3, hidden_size=7, num_layers=2, bidirectional=True, proj_size=3),
        6, 4, [6, 2, 5, 1]),
    "identity_batch_first_no_bias": (
        dict(input_size=4, hidden_size=6, activation="identity", batch_first=True, bias=False),
        5, 3, None),
    "large": (dict(input_size=16, hidden_size=200, bidirectional=True), 8, 64, None),
    "long": (dict(input_size=3, hidden_size=8), 1000, 3, None),
}


def _compare_cuda(dtype, case):
    kwargs, T, B, lengths = CASES[case]
    fused, ref = fused_and_reference(dtype, seed=1, **kwargs)
    fused = fused.cuda()
    x, hx = make_inputs(fused, T, B, 2, dtype)
    x64 = x.detach().double().requires_grad_()
    hx64 = tuple(h.detach().double().requires_grad_() for h in hx)
    x_cuda = x.detach().cuda().requires_grad_()
    hx_cuda = tuple(h.detach().cuda().requires_grad_() for h in hx)
    got = forward_backward(fused, x_cuda, hx_cuda, lengths=lengths, seed=3)
    assert got["output"].device.type == "cuda"
    want = forward_backward(ref, x64, hx64, lengths=lengths, seed=3)
    assert_results_close(got, want, TOL[dtype], context=f"cuda {dtype} {case}")


@pytest.mark.parametrize("case", list(CASES))
def test_cuda_float32_matches_float64_reference(case):
    _compare_cuda(torch.float32, case)


@pytest.mark.parametrize("case", ["base", "bidir_two_layers_proj_packed"])
def test_cuda_float64_matches_reference(case):
    _compare_cuda(torch.float64, case)


def test_cuda_repeat_is_bitwise_identical():
    kwargs, T, B, lengths = CASES["large"]
    fused, _ = fused_and_reference(torch.float32, seed=4, **kwargs)
    fused = fused.cuda()
    x, hx = make_inputs(fused, T, B, 5, torch.float32)
    x = x.detach().cuda().requires_grad_()
    hx = tuple(h.detach().cuda().requires_grad_() for h in hx)
    first = forward_backward(fused, x, hx, seed=6)
    again = forward_backward(fused, x, hx, seed=6)
    for k in first:
        assert torch.equal(first[k], again[k]), k


def _same_error(fn_lstm, fn_ours):
    with pytest.raises(Exception) as lstm_exc:
        fn_lstm()
    with pytest.raises(Exception) as our_exc:
        fn_ours()
    assert type(our_exc.value) is type(lstm_exc.value)
    assert str(our_exc.value) == str(lstm_exc.value)


def test_cpu_input_cuda_module_error_matches_nn_lstm():
    lstm = nn.LSTM(4, 5).cuda()
    ours = tlstm.PeepholeLSTM(4, 5).cuda()
    x = torch.randn(3, 2, 4)
    _same_error(lambda: lstm(x), lambda: ours(x))


def test_cuda_input_cpu_module_error_matches_nn_lstm():
    lstm = nn.LSTM(4, 5)
    ours = tlstm.PeepholeLSTM(4, 5)
    x = torch.randn(3, 2, 4, device="cuda")
    _same_error(lambda: lstm(x), lambda: ours(x))


def test_hidden_on_other_device_error_matches_nn_lstm():
    lstm = nn.LSTM(4, 5).cuda()
    ours = tlstm.PeepholeLSTM(4, 5).cuda()
    x = torch.randn(3, 2, 4, device="cuda")
    hx = (torch.randn(1, 2, 5), torch.randn(1, 2, 5, device="cuda"))
    _same_error(lambda: lstm(x, hx), lambda: ours(x, hx))
