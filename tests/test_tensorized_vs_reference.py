"""Fused tlstm.TensorizedLSTM against the float64 reference module (docs/cells.md,
docs/parity.md): outputs, final states and every gradient (input, H_0, C_0, each parameter)
under random upstream gradients, in float64 (<= 1e-10) and float32 (<= 1e-5 against the
float64 reference), over depths, kernel sizes, every flag, projections, packed input, flush,
batch_first, T = 1 and 1 or 2 threads; the table of cases also on CUDA, with both recurrences,
where there is a GPU (the reference always runs on the CPU in float64). On CUDA also: float64
against the CPU kernels and the persistent recurrence against the stepwise, both within 1e-12.
Also the reference and the fused module against `spec_tlstm`, an implementation of
docs/cells.md written independently of the library."""
import pytest
import torch

import tlstm
from helpers import (
    RECURRENCES,
    TOL,
    assert_results_close,
    cpu_threads_and_cuda,
    cuda_param,
    cuda_recurrences,
    num_threads,
    on_device,
    pack,
)
from tensorized_helpers import (
    F32,
    F64,
    as_f64_leaves,
    compare_fused_to_reference,
    config_id,
    flag_combinations,
    forward_backward,
    fused_and_reference,
    make_inputs,
    make_tlstm,
    spec_tlstm,
    upstream,
)

DTYPES = [F64, F32]
DTYPE_IDS = ["f64", "f32"]


# ---- depth x kernel size --------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kernel_size", [3, 5])
@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5, 6])
def test_depth_and_kernel_size(depth, kernel_size, dtype):
    compare_fused_to_reference(dtype, T=5, B=3, seed=depth * 10 + kernel_size, input_size=3,
                               hidden_size=5, depth=depth, kernel_size=kernel_size)


# ---- every flag on and off ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("flags", flag_combinations(), ids=config_id)
def test_flags(flags, dtype):
    """Every combination of channel_norm, memory_conv, feedback and bias, at depth 3 (K=3) and
    with flush on (the packed variants below cover the rest)."""
    seed = sum(v << k for k, v in enumerate(flags.values()))
    compare_fused_to_reference(dtype, T=6, B=3, seed=100 + seed, input_size=4, hidden_size=6,
                               depth=3, **flags)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("flags", flag_combinations(), ids=config_id)
def test_flags_kernel5_packed_streaming(flags, dtype):
    """Every flag combination again with K = 5, depth 3, packed unsorted lengths, flush=False."""
    seed = sum(v << k for k, v in enumerate(flags.values()))
    compare_fused_to_reference(dtype, T=6, B=4, seed=200 + seed, lengths=[4, 6, 1, 3],
                               flush=False, input_size=3, hidden_size=5, depth=3, kernel_size=5,
                               **flags)


# ---- projection, packing, flush, T=1, batch_first, no state -----------------------------------

CASES = {
    "proj": (dict(input_size=3, hidden_size=6, depth=3, proj_size=4), 5, 3, None, True),
    "proj_packed_no_flush": (dict(input_size=3, hidden_size=6, depth=4, proj_size=2), 6, 4,
                             [2, 6, 5, 1], False),
    "packed_unsorted": (dict(input_size=3, hidden_size=5, depth=3), 7, 4, [5, 2, 7, 1], True),
    "packed_unsorted_k5_deep": (dict(input_size=2, hidden_size=4, depth=5, kernel_size=5), 6,
                                4, [3, 6, 1, 4], True),
    "packed_all_equal": (dict(input_size=3, hidden_size=5, depth=2), 4, 3, [4, 4, 4], True),
    "packed_sorted": (dict(input_size=3, hidden_size=5, depth=3), 5, 3, [5, 3, 1], False),
    "packed_nofeedback_nomemconv": (dict(input_size=3, hidden_size=5, depth=4, feedback=False,
                                         memory_conv=False), 5, 4, [1, 5, 2, 4], True),
    "no_flush": (dict(input_size=3, hidden_size=5, depth=4), 6, 3, None, False),
    "no_flush_k5": (dict(input_size=3, hidden_size=5, depth=3, kernel_size=5), 6, 2, None,
                    False),
    "T1": (dict(input_size=3, hidden_size=5, depth=4), 1, 3, None, True),
    "T1_no_flush": (dict(input_size=3, hidden_size=5, depth=4), 1, 3, None, False),
    "T1_packed": (dict(input_size=3, hidden_size=5, depth=3), 1, 2, [1, 1], True),
    "B1": (dict(input_size=3, hidden_size=7, depth=3), 5, 1, None, True),
    "M1": (dict(input_size=2, hidden_size=1, depth=3, channel_norm=False), 4, 2, None, True),
    "batch_first": (dict(input_size=3, hidden_size=5, depth=3, batch_first=True), 5, 3, None,
                    True),
    "batch_first_packed": (dict(input_size=3, hidden_size=5, depth=3, batch_first=True), 5, 3,
                           [3, 5, 2], True),
    "batch_first_no_flush_proj": (dict(input_size=3, hidden_size=5, depth=2, batch_first=True,
                                       proj_size=3), 4, 2, None, False),
    "wide": (dict(input_size=5, hidden_size=8, depth=3, kernel_size=5), 4, 2, None, True),
    "base": (dict(input_size=3, hidden_size=5, depth=3), 6, 4, None, True),
    "k5_proj_packed": (dict(input_size=3, hidden_size=6, depth=4, kernel_size=5, proj_size=3),
                       6, 4, [6, 2, 5, 1], True),
    "packed_no_flush": (dict(input_size=4, hidden_size=8, depth=3), 7, 5, [2, 7, 7, 1, 4],
                        False),
    "no_flush_depth5": (dict(input_size=3, hidden_size=5, depth=5), 5, 3, None, False),
    "no_feedback_no_memconv": (dict(input_size=3, hidden_size=7, depth=4, feedback=False,
                                    memory_conv=False), 5, 3, None, True),
    "no_cn_no_bias_batch_first": (dict(input_size=4, hidden_size=6, depth=3, channel_norm=False,
                                       bias=False, batch_first=True), 5, 3, [5, 3, 4], True),
    "depth1": (dict(input_size=3, hidden_size=5, depth=1), 4, 2, None, True),
    "M33": (dict(input_size=5, hidden_size=33, depth=3), 5, 5, [5, 1, 4, 2, 5], True),
    "M100": (dict(input_size=7, hidden_size=100, depth=3, kernel_size=5), 4, 3, None, False),
    # S*N*B = 28*3*7 = 588 rows of dA: more than the CPU's weight gradients take in one block
    # (512), and a step's 21 rows lie across the block's edge
    "rows_past_a_block": (dict(input_size=3, hidden_size=5, depth=3), 26, 7,
                          [26, 9, 25, 1, 26, 14, 20], True),
}


@pytest.mark.parametrize("device,threads", cpu_threads_and_cuda(), indirect=["device"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", list(CASES))
def test_cases(case, dtype, device, threads):
    kwargs, T, B, lengths, flush = CASES[case]
    with num_threads(threads):
        compare_fused_to_reference(dtype, T=T, B=B, seed=len(case), lengths=lengths,
                                   flush=flush, device=device, **kwargs)


@pytest.mark.parametrize("device", cuda_recurrences(), indirect=True)
@pytest.mark.parametrize("case", ["base", "k5_proj_packed", "packed_no_flush", "M33"])
def test_cuda_float64_matches_cpu_kernels(case, device):
    """CUDA float64 against the fused CPU kernels in float64 on the same weights and data:
    <= 1e-12 (only the order of the sums differs)."""
    kwargs, T, B, lengths, flush = CASES[case]
    fused = make_tlstm(tlstm.TensorizedLSTM, F64, seed=3, **kwargs)
    x, state = make_inputs(fused, T, B, 4)
    cpu = forward_backward(fused, x, state, lengths=lengths, flush=flush, seed=5)
    fused.to(device)
    got = forward_backward(fused, *on_device(device, x, state), lengths=lengths, flush=flush,
                           seed=5)
    assert got["output"].device.type == "cuda"
    assert_results_close(got, cpu, 1e-12, context=f"cuda vs cpu float64 {case}")


@pytest.mark.parametrize("device", [cuda_param()], indirect=True)
@pytest.mark.parametrize("case", list(CASES))
def test_cuda_persistent_matches_stepwise_in_float64(case, device, monkeypatch):
    """The persistent kernel and the step kernels in float64 on the same inputs: <= 1e-12 (only
    the order of the GEMM's sums differs)."""
    kwargs, T, B, lengths, flush = CASES[case]
    fused = make_tlstm(tlstm.TensorizedLSTM, F64, seed=41, **kwargs).to(device)
    x, state = make_inputs(fused, T, B, 42)
    results = {}
    for recurrence in RECURRENCES:
        monkeypatch.setenv("TLSTM_CUDA_RECURRENCE", recurrence)
        results[recurrence] = forward_backward(fused, x, state, lengths=lengths, flush=flush,
                                               seed=43)
    assert results["persistent"]["output"].device.type == "cuda"
    assert_results_close(results["persistent"], results["stepwise"], 1e-12,
                         context=f"cuda persistent vs stepwise {case}")


@pytest.mark.parametrize("device", cuda_recurrences(), indirect=True)
def test_large_batch_rows_channels(device):
    """A large B*P*M (B=64, P=6, M=256) in float32 against the float64 reference (the
    persistent kernel stages 384 rows of X_col in chunks of 41 columns here). CUDA only: the
    float64 reference takes some 20 s on the CPU at this size, where test_threaded_size covers
    the CPU kernels' split of the work."""
    lengths = [(7 * b) % 8 + 1 for b in range(64)]
    compare_fused_to_reference(F32, T=8, B=64, seed=21, lengths=lengths, device=device,
                               input_size=32, hidden_size=256, depth=6)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("flush", [True, False])
def test_without_initial_state(dtype, flush):
    """state=None: the zero initial state; outputs and parameter gradients still match."""
    compare_fused_to_reference(dtype, T=5, B=3, seed=7, with_state=False, flush=flush,
                               input_size=3, hidden_size=5, depth=3)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_threaded_size(dtype, threads):
    """A size where every step is split over several tasks (B*P rows of 4M+K gate channels)."""
    with num_threads(threads):
        compare_fused_to_reference(dtype, T=4, B=8, seed=9, lengths=[4, 1, 3, 4, 2, 4, 3, 1],
                                   input_size=6, hidden_size=40, depth=4)


def test_unbatched_and_partial_grads():
    """Unbatched input and only some leaves requiring grad: same values as the reference."""
    fused, ref = fused_and_reference(F64, seed=3, input_size=3, hidden_size=5, depth=3)
    x = torch.randn(4, 3, dtype=F64)
    h0 = torch.randn(fused.rows, 5, dtype=F64, requires_grad=True)
    c0 = torch.randn(fused.rows, 5, dtype=F64)
    results = []
    for m in (fused, ref):
        out, (h, c) = m(x, (h0, c0))
        loss = (out * upstream(out.shape, 1, F64)).sum() + (c * upstream(c.shape, 2, F64)).sum()
        g_h0, g_w = torch.autograd.grad(loss, [h0, m.weight_hh])
        results.append({"output": out.detach(), "h_n": h.detach(), "c_n": c.detach(),
                        "g_h0": g_h0, "g_w": g_w})
    assert_results_close(results[0], results[1], TOL[F64])


# ---- the reference and the fused module against an independent implementation of the cell ---

SPEC_CASES = {
    "default": (dict(input_size=3, hidden_size=4, depth=3), 4, 2, None, True),
    "k5_depth2": (dict(input_size=2, hidden_size=4, depth=2, kernel_size=5), 4, 2, None, True),
    "no_feedback_k5": (dict(input_size=2, hidden_size=3, depth=3, kernel_size=5,
                            feedback=False), 3, 2, None, True),
    "no_memconv_no_cn_no_bias": (dict(input_size=2, hidden_size=3, depth=3, memory_conv=False,
                                      channel_norm=False, bias=False), 4, 2, None, True),
    "lengths_flush": (dict(input_size=2, hidden_size=3, depth=3, proj_size=2), 4, 3, [2, 4, 1],
                      True),
    "lengths_no_flush": (dict(input_size=2, hidden_size=3, depth=4), 4, 3, [3, 1, 4], False),
    "depth1": (dict(input_size=2, hidden_size=3, depth=1), 3, 2, None, True),
}


@pytest.mark.parametrize("module_cls", ["fused", "reference"])
@pytest.mark.parametrize("case", list(SPEC_CASES))
def test_matches_independent_spec_implementation(case, module_cls):
    """Outputs, states and gradients of the module (fused or reference) in float64 equal those
    of spec_tlstm, a one-row-one-tap-at-a-time transcription of docs/cells.md section 2."""
    kwargs, T, B, lengths, flush = SPEC_CASES[case]
    cls = tlstm.TensorizedLSTM if module_cls == "fused" else tlstm.reference.TensorizedLSTM
    module = make_tlstm(cls, F64, seed=len(case), **kwargs)
    x, state = make_inputs(module, T, B, seed=5)
    got = forward_backward(module, x, state, lengths=lengths, flush=flush, seed=6)

    x2, state2 = as_f64_leaves(x, state)
    out, h_n, c_n = spec_tlstm(module, x2, *state2, lengths=lengths, flush=flush)
    if lengths is not None:
        mask = torch.arange(T).unsqueeze(1) < torch.tensor(lengths).unsqueeze(0)
        assert torch.equal(out[~mask], torch.zeros_like(out[~mask]))  # zero past the end
        # the rows of the packed output, in the same order as the module's PackedSequence
        out = pack(out, lengths, batch_first=False).data
    if module.batch_first:
        raise AssertionError("SPEC_CASES are time-major")
    loss = ((out * upstream(out.shape, 6, F64)).sum()
            + (h_n * upstream(h_n.shape, 7, F64)).sum()
            + (c_n * upstream(c_n.shape, 8, F64)).sum())
    params = dict(module.named_parameters())
    # spec_tlstm reads the module's own parameters, so their gradients come from it too
    grads = torch.autograd.grad(loss, [x2, *state2, *params.values()])
    want = {"output": out.detach(), "h_n": h_n.detach(), "c_n": c_n.detach(),
            "grad_input": grads[0], "grad_h0": grads[1], "grad_c0": grads[2]}
    want.update({"grad_" + n: g for n, g in zip(params, grads[3:])})
    assert_results_close(got, want, TOL[F64], context=f"{module_cls} {case}")
