"""CUDA kernels of the peephole LSTM against the float64 reference (docs/parity.md), both
recurrences (cuBLAS steps and the persistent kernel), streams, sizes and nn.LSTM's device
errors. Skipped without a GPU."""
import pytest
import torch
from torch import nn

if not torch.cuda.is_available():
    pytest.skip("CUDA is not available", allow_module_level=True)

import tlstm  # noqa: E402
from helpers import (  # noqa: E402
    TOL,
    assert_results_close,
    assert_within_half_bound,
    fail_without_cuda_kernels,
    peephole_forward_backward,
    peephole_fused_and_reference,
    make_peephole_inputs,
    rel_err,
)



@pytest.fixture(autouse=True)
def cuda_kernels_and_no_tf32(no_tf32):
    """A GPU is there: the CUDA kernels must be too (fail, not skip); float32 GEMMs without
    TF32, restored after each test."""
    fail_without_cuda_kernels("tlstm::peephole_lstm_forward")

RECURRENCES = ["stepwise", "persistent"]

CASES = {
    "base": (dict(input_size=3, hidden_size=5), 6, 4, None),
    "bidir_two_layers_proj_packed": (
        dict(input_size=3, hidden_size=7, num_layers=2, bidirectional=True, proj_size=3),
        6, 4, [6, 2, 5, 1]),
    "identity_batch_first_no_bias": (
        dict(input_size=4, hidden_size=6, activation="identity", batch_first=True, bias=False),
        5, 3, None),
    "packed_bidir": (dict(input_size=3, hidden_size=33, bidirectional=True), 7, 5,
                     [2, 7, 7, 1, 4]),
    "no_peephole": (dict(input_size=4, hidden_size=40, peephole=False), 5, 3, None),
    "large": (dict(input_size=16, hidden_size=200, bidirectional=True), 8, 64, None),
    "long": (dict(input_size=3, hidden_size=8), 1000, 3, None),
}


@pytest.fixture(params=RECURRENCES)
def recurrence(request, monkeypatch):
    monkeypatch.setenv("TLSTM_CUDA_RECURRENCE", request.param)
    return request.param


def _cuda_copy(x, hx):
    x_cuda = x.detach().cuda().requires_grad_()
    hx_cuda = tuple(h.detach().cuda().requires_grad_() for h in hx)
    return x_cuda, hx_cuda


def _results(dtype, case, seed=1, device="cuda"):
    """The fused module in `dtype` on `device` and the float64 reference on the CPU."""
    kwargs, T, B, lengths = CASES[case]
    fused, ref = peephole_fused_and_reference(dtype, seed=seed, **kwargs)
    fused = fused.to(device)
    x, hx = make_peephole_inputs(fused, T, B, seed + 1, dtype)
    x64 = x.detach().double().requires_grad_()
    hx64 = tuple(h.detach().double().requires_grad_() for h in hx)
    if device == "cuda":
        x, hx = _cuda_copy(x, hx)
    got = peephole_forward_backward(fused, x, hx, lengths=lengths, seed=seed + 2)
    want = peephole_forward_backward(ref, x64, hx64, lengths=lengths, seed=seed + 2)
    return got, want, (kwargs, x64, hx64, lengths)


@pytest.mark.parametrize("case", list(CASES))
def test_float32_matches_float64_reference(case, recurrence):
    got, want, _ = _results(torch.float32, case)
    assert got["output"].device.type == "cuda"
    assert_results_close(got, want, TOL[torch.float32], context=f"{recurrence} float32 {case}")


@pytest.mark.parametrize("case", ["base", "bidir_two_layers_proj_packed", "packed_bidir",
                                  "no_peephole"])
def test_float64_matches_reference(case, recurrence):
    got, want, _ = _results(torch.float64, case)
    assert_results_close(got, want, TOL[torch.float64], context=f"{recurrence} float64 {case}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("case", ["base", "bidir_two_layers_proj_packed", "large"])
def test_half_types_within_twice_the_reference_error(case, dtype, recurrence):
    """docs/parity.md: error <= 2 x the error of the reference module run in that dtype, + 1e-3."""
    got, want, (kwargs, x64, hx64, lengths) = _results(dtype, case)
    ref_low = tlstm.reference.PeepholeLSTM(**kwargs).to("cuda", dtype)
    fused64, _ = peephole_fused_and_reference(torch.float64, seed=1, **kwargs)  # the same weights
    ref_low.load_state_dict(fused64.state_dict())
    x_low = x64.detach().to("cuda", dtype).requires_grad_()
    hx_low = tuple(h.detach().to("cuda", dtype).requires_grad_() for h in hx64)
    low = peephole_forward_backward(ref_low, x_low, hx_low, lengths=lengths, seed=3)
    assert_within_half_bound(got, low, want, context=f"{recurrence} {dtype} {case}")


def test_cuda_float64_matches_cpu_kernels(recurrence):
    got, _, _ = _results(torch.float64, "packed_bidir")
    cpu, _, _ = _results(torch.float64, "packed_bidir", device="cpu")
    assert_results_close(got, cpu, 1e-12, context="cuda vs cpu float64")


@pytest.mark.parametrize("hidden_size", [1, 31, 33, 100, 2048])
def test_hidden_sizes_not_multiples_of_32(hidden_size, recurrence):
    if recurrence == "persistent" and hidden_size > 1024:
        pytest.skip("the persistent kernel keeps W_hh in shared memory: H=2048 does not fit")
    kwargs = dict(input_size=5, hidden_size=hidden_size)
    fused, ref = peephole_fused_and_reference(torch.float64, seed=5, **kwargs)
    fused = fused.cuda()
    T, B = (3, 2) if hidden_size == 2048 else (6, 3)
    x, hx = make_peephole_inputs(fused, T, B, 6, torch.float64)
    x64 = x.detach().requires_grad_()
    hx64 = tuple(h.detach().requires_grad_() for h in hx)
    got = peephole_forward_backward(fused, *_cuda_copy(x, hx), seed=7)
    want = peephole_forward_backward(ref, x64, hx64, seed=7)
    assert_results_close(got, want, TOL[torch.float64], context=f"H={hidden_size}")


def test_empty_batch(recurrence):
    m = tlstm.PeepholeLSTM(4, 6).cuda()
    lstm = nn.LSTM(4, 6).cuda()
    x = torch.randn(5, 0, 4, device="cuda", requires_grad=True)
    out, (h, c) = m(x)
    ref_out, (ref_h, ref_c) = lstm(x)
    assert out.shape == ref_out.shape and h.shape == ref_h.shape and c.shape == ref_c.shape
    out.sum().backward()
    assert x.grad.shape == x.shape


def test_non_default_stream(recurrence):
    """The kernels run on the current stream: results on a side stream equal the default's."""
    kwargs, T, B, _ = CASES["large"]
    fused, _ = peephole_fused_and_reference(torch.float32, seed=8, **kwargs)
    fused = fused.cuda()
    x, hx = make_peephole_inputs(fused, T, B, 9, torch.float32)
    x, hx = _cuda_copy(x, hx)
    first = peephole_forward_backward(fused, x, hx, seed=10)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        again = peephole_forward_backward(fused, x, hx, seed=10)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    for k in first:
        assert torch.equal(first[k], again[k]), k


def test_repeat_100_times_bitwise_identical(recurrence):
    kwargs, T, B, lengths = CASES["packed_bidir"]
    fused, _ = peephole_fused_and_reference(torch.float32, seed=4, **kwargs)
    fused = fused.cuda()
    x, hx = make_peephole_inputs(fused, T, B, 5, torch.float32)
    x, hx = _cuda_copy(x, hx)
    first = peephole_forward_backward(fused, x, hx, lengths=lengths, seed=6)
    for _ in range(100):
        again = peephole_forward_backward(fused, x, hx, lengths=lengths, seed=6)
        for k in first:
            assert torch.equal(first[k], again[k]), k


def test_more_than_2_31_gate_elements(monkeypatch):
    """T*B*4H > 2^31: 64-bit offsets, forward and backward. Rows are independent, so the last
    rows of the big batch (where 32-bit offsets would wrap) must equal the float64 reference run
    on those rows alone: outputs, final states and the input gradient."""
    monkeypatch.setenv("TLSTM_CUDA_RECURRENCE", "stepwise")
    T, B, I, H = 1000, 540, 4, 1024  # T*B*4H = 2.21e9 gate elements, 8.8 GB in float32
    free, _ = torch.cuda.mem_get_info()
    if free < 48 * 2**30:
        pytest.skip("needs 48 GiB of free GPU memory (the saved gates and their gradient)")
    torch.manual_seed(0)
    m = tlstm.PeepholeLSTM(I, H, device="cuda")
    x = torch.randn(T, B, I, device="cuda", requires_grad=True)
    upstream = torch.randn(T, B, H, device="cuda")
    out, (h, c) = m(x)
    (out * upstream).sum().backward()

    ref = tlstm.reference.PeepholeLSTM(I, H, dtype=torch.float64)
    ref.load_state_dict(m.state_dict())
    x_last = x[:, -2:].detach().cpu().double().requires_grad_()
    out_r, (h_r, c_r) = ref(x_last)
    (out_r * upstream[:, -2:].cpu().double()).sum().backward()
    assert rel_err(out[:, -2:], out_r) <= TOL[torch.float32]
    assert rel_err(h[:, -2:], h_r) <= TOL[torch.float32]
    assert rel_err(c[:, -2:], c_r) <= TOL[torch.float32]
    assert rel_err(x.grad[:, -2:], x_last.grad) <= TOL[torch.float32]


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


def test_forcing_persistent_where_it_cannot_run_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TLSTM_CUDA_RECURRENCE", "persistent")
    m = tlstm.PeepholeLSTM(4, 8192, dtype=torch.float64).cuda()  # W_hh slices exceed smem
    with pytest.raises(RuntimeError, match="persistent kernel cannot run"):
        m(torch.randn(2, 2, 4, device="cuda", dtype=torch.float64))
