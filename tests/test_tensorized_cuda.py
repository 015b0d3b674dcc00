"""CUDA kernels of the tensorized LSTM against the float64 CPU reference (docs/cells.md,
docs/parity.md), for both recurrences (the step kernels and the persistent kernel, forced with
TLSTM_CUDA_RECURRENCE): float32 / float64 for several flag sets (lengths, flush=False
included), float16 / bfloat16 against the reference module run in the same dtype on CUDA, CUDA
float64 against the CPU kernels, the two recurrences against each other, sizes that are not
multiples of 32, bitwise repeatability and a large B*P*M case. Skipped without a GPU or
without the CUDA kernels of tlstm::tensorized_lstm_forward."""
import pytest
import torch

DEVICE = "cuda"

if not torch.cuda.is_available():
    pytest.skip("CUDA is not available", allow_module_level=True)

import tlstm  # noqa: E402
from helpers import (  # noqa: E402
    TOL, assert_results_close, assert_results_equal, assert_within_half_bound,
    fail_without_cuda_kernels,
)
from tensorized_helpers import (  # noqa: E402
    F32,
    F64,
    as_f64_leaves,
    backward_op_args,
    forward_backward,
    fused_and_reference,
    make_inputs,
    op_args,
)


RECURRENCES = ["stepwise", "persistent"]
pytestmark = pytest.mark.cuda  # benchmarks/gpu_session.sh runs pytest -m cuda


@pytest.fixture(params=RECURRENCES)
def recurrence(request, monkeypatch):
    monkeypatch.setenv("TLSTM_CUDA_RECURRENCE", request.param)
    return request.param


@pytest.fixture(autouse=True)
def cuda_kernels_and_no_tf32(no_tf32):
    """A GPU is there: the CUDA kernels must be too (fail, not skip); float32 GEMMs without
    TF32 (the no_tf32 fixture restores the settings after each test)."""
    fail_without_cuda_kernels("tlstm::tensorized_lstm_forward")


# kwargs, T, B, lengths, flush
CASES = {
    "base": (dict(input_size=3, hidden_size=5, depth=3), 6, 4, None, True),
    "k5_proj_packed": (dict(input_size=3, hidden_size=6, depth=4, kernel_size=5, proj_size=3),
                       6, 4, [6, 2, 5, 1], True),
    "packed_no_flush": (dict(input_size=4, hidden_size=8, depth=3), 7, 5, [2, 7, 7, 1, 4],
                        False),
    "no_flush": (dict(input_size=3, hidden_size=5, depth=5), 5, 3, None, False),
    "no_feedback_no_memconv": (dict(input_size=3, hidden_size=7, depth=4, feedback=False,
                                    memory_conv=False), 5, 3, None, True),
    "no_cn_no_bias_batch_first": (dict(input_size=4, hidden_size=6, depth=3, channel_norm=False,
                                       bias=False, batch_first=True), 5, 3, [5, 3, 4], True),
    "depth1": (dict(input_size=3, hidden_size=5, depth=1), 4, 2, None, True),
    "T1": (dict(input_size=3, hidden_size=5, depth=4), 1, 3, None, True),
    "M33": (dict(input_size=5, hidden_size=33, depth=3), 5, 5, [5, 1, 4, 2, 5], True),
    "M100": (dict(input_size=7, hidden_size=100, depth=3, kernel_size=5), 4, 3, None, False),
}


def run_on_device(dtype, case, seed=1):
    """(fused on the device in `dtype`, float64 reference on the CPU) results of a case, and
    what is needed to rerun it."""
    kwargs, T, B, lengths, flush = CASES[case]
    fused, ref = fused_and_reference(dtype, seed=seed, **kwargs)
    fused = fused.to(DEVICE)
    x, state = make_inputs(fused, T, B, seed + 1)
    x64, state64 = as_f64_leaves(x, state)
    got = forward_backward(fused, x, state, lengths=lengths, flush=flush, seed=seed + 2)
    want = forward_backward(ref, x64, state64, lengths=lengths, flush=flush, seed=seed + 2)
    assert got["output"].device.type == DEVICE and got["output"].dtype == dtype
    return got, want, (fused, ref, x, state, lengths, flush)


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_float64_reference(case, dtype, recurrence):
    got, want, _ = run_on_device(dtype, case)
    assert_results_close(got, want, TOL[dtype], context=f"{DEVICE} {dtype} {case} {recurrence}")


@pytest.mark.parametrize("case", list(CASES))
def test_persistent_matches_steps_in_float64(case, monkeypatch):
    """The persistent kernel and the step kernels in float64 on the same inputs: <= 1e-12 (only
    the order of the GEMM's sums differs)."""
    results = {}
    for recurrence in RECURRENCES:
        monkeypatch.setenv("TLSTM_CUDA_RECURRENCE", recurrence)
        results[recurrence], _, _ = run_on_device(F64, case, seed=41)
    assert_results_close(results["persistent"], results["stepwise"], 1e-12,
                         context=f"{DEVICE} persistent vs steps {case}")


@pytest.mark.parametrize("case", ["base", "k5_proj_packed", "packed_no_flush", "M33"])
def test_float64_matches_cpu_kernels(case):
    """CUDA float64 against the fused CPU kernels in float64: <= 1e-12."""
    got, _, (fused, _, x, state, lengths, flush) = run_on_device(F64, case, seed=3)
    cpu = fused.to("cpu")
    x_cpu, state_cpu = as_f64_leaves(x, state)
    want = forward_backward(cpu, x_cpu, state_cpu, lengths=lengths, flush=flush, seed=5)
    assert_results_close(got, want, 1e-12, context=f"{DEVICE} f64 vs CPU kernels {case}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("case", ["base", "k5_proj_packed", "packed_no_flush", "M33"])
def test_half_precision_within_the_reference_in_that_dtype(case, dtype, recurrence):
    """float16 / bfloat16: each result's error (against the float64 reference) is at most twice
    the error of the reference module itself run in that dtype on the device, plus 1e-3."""
    kwargs, T, B, lengths, flush = CASES[case]
    got, want, (fused, _, x, state, lengths, flush) = run_on_device(dtype, case, seed=7)
    ref_half = tlstm.reference.TensorizedLSTM(dtype=dtype, device=DEVICE, **kwargs)
    ref_half.load_state_dict(fused.state_dict())
    x_h = x.detach().requires_grad_()
    state_h = tuple(s.detach().requires_grad_() for s in state)
    base = forward_backward(ref_half, x_h, state_h, lengths=lengths, flush=flush, seed=9)
    assert_within_half_bound(got, base, want, context=f"{dtype} {case}")


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", ["k5_proj_packed", "M100"])
def test_repeat_is_bitwise_identical(case, dtype, recurrence):
    kwargs, T, B, lengths, flush = CASES[case]
    fused, _ = fused_and_reference(dtype, seed=11, **kwargs)
    fused = fused.to(DEVICE)
    x, state = make_inputs(fused, T, B, 12)
    first = forward_backward(fused, x, state, lengths=lengths, flush=flush, seed=13)
    for _ in range(2):
        again = forward_backward(fused, x, state, lengths=lengths, flush=flush, seed=13)
        assert_results_equal(again, first, context=f"{DEVICE} {case}")


def test_large_batch_rows_channels(recurrence):
    """A large B*P*M (B=64, P=6, M=256) in float32 against the float64 reference (the
    persistent kernel stages 384 rows of X_col in chunks of 41 columns here)."""
    kwargs = dict(input_size=32, hidden_size=256, depth=6)
    lengths = [(7 * b) % 8 + 1 for b in range(64)]
    fused, ref = fused_and_reference(F32, seed=21, **kwargs)
    fused = fused.to(DEVICE)
    x, state = make_inputs(fused, 8, 64, 22)
    x64, state64 = as_f64_leaves(x, state)
    got = forward_backward(fused, x, state, lengths=lengths, seed=23)
    want = forward_backward(ref, x64, state64, lengths=lengths, seed=23)
    assert_results_close(got, want, TOL[F32], context="large")


def test_forcing_persistent_where_it_cannot_run_is_a_clear_error(monkeypatch):
    """M=1024: a block's columns of W_col (32 x 3072 floats) exceed shared memory."""
    monkeypatch.setenv("TLSTM_CUDA_RECURRENCE", "persistent")
    fused, _ = fused_and_reference(F32, seed=35, input_size=3, hidden_size=1024, depth=2)
    fused = fused.to(DEVICE)
    with pytest.raises(RuntimeError, match="persistent kernel cannot run"):
        fused(torch.randn(2, 2, 3, device=DEVICE))


def test_state_on_the_cpu_is_refused():
    fused, _ = fused_and_reference(F32, seed=31, input_size=3, hidden_size=5, depth=3)
    fused = fused.to(DEVICE)
    x = torch.randn(4, 2, 3, device=DEVICE)
    zeros = torch.zeros(2, fused.rows, 5)
    with pytest.raises(RuntimeError, match="Input and state tensors are not at the same device"):
        fused(x, (zeros, zeros))
    with pytest.raises(RuntimeError,
                       match="Input and parameter tensors are not at the same device"):
        fused.to("cpu")(x)


@pytest.mark.parametrize("name", ["norm_weight", "q", "norm_hat", "cells"])
def test_backward_op_refuses_a_buffer_on_the_cpu(name):
    """The backward op, called directly, names a parameter or saved buffer that is not on the
    input's device instead of reading host memory from a kernel."""
    fused, _ = fused_and_reference(F32, seed=32, input_size=3, hidden_size=5, depth=3)
    fused = fused.to(DEVICE)
    x, (h0, c0) = make_inputs(fused, 4, 2, 33, device=DEVICE)
    with torch.no_grad():
        args = op_args(fused, x, h0, c0)
        outs = torch.ops.tlstm.tensorized_lstm_forward(*args, True)
        bargs = backward_op_args(args, outs, [torch.ones_like(t) for t in outs[:3]],
                                 **{name: lambda t: t.cpu()})
        with pytest.raises(RuntimeError, match=f"expected {name} on device cuda:0 .*got cpu"):
            torch.ops.tlstm.tensorized_lstm_backward(*bargs)
