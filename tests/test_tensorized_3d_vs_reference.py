"""The fused 3-D tensorized LSTM (tensor_dim=3, docs/cells.md section 7) against the float64
reference module: outputs, final states and every gradient, float64 <= 1e-10 and float32
<= 1e-5 (M >= 8 in float32: a channel norm over fewer channels makes the random data
ill-conditioned, and the float32 reference itself then misses float64 by more than 1e-5), over
depth 1..5, K 3 and 5, every flag, projections, packed input, streaming, batch_first, unbatched input and T = 1; on CUDA too where there is a GPU (the 3-D cell runs the
step kernels there). Also gradcheck of the op and the errors; the cell's own properties (the
transcription of section 7, the delay, chunks, depth 1 = nn.LSTM) are held by both modules in
test_tensorized_3d_reference.py."""
import pytest
import torch

import tlstm
from helpers import TOL, cpu_and_cuda, num_threads, rel_err
from tensorized_helpers import (
    F32,
    F64,
    compare_fused_to_reference,
    config_id,
    flag_combinations,
    make_inputs,
    make_tlstm,
)

DTYPES = [F64, F32]
DTYPE_IDS = ["f64", "f32"]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kernel_size", [3, 5])
@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_depth_and_kernel_size(depth, kernel_size, dtype):
    compare_fused_to_reference(dtype, T=4, B=2, seed=300 + depth * 10 + kernel_size,
                               input_size=3, hidden_size=8, depth=depth,
                               kernel_size=kernel_size, tensor_dim=3)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("flags", flag_combinations(), ids=config_id)
def test_flags(flags, dtype):
    """Every combination of channel_norm, memory_conv, feedback and bias at depth 3, K=3 with
    flush; and again with K=5, packed unsorted lengths and flush=False."""
    seed = sum(v << k for k, v in enumerate(flags.values()))
    compare_fused_to_reference(dtype, T=5, B=3, seed=400 + seed, input_size=3, hidden_size=8,
                               depth=3, tensor_dim=3, **flags)
    compare_fused_to_reference(dtype, T=5, B=3, seed=500 + seed, lengths=[3, 5, 1],
                               flush=False, input_size=3, hidden_size=8, depth=2,
                               kernel_size=5, tensor_dim=3, **flags)


CASES = {
    "proj": (dict(input_size=3, hidden_size=8, depth=3, proj_size=2), 5, 3, None, True),
    "packed_unsorted": (dict(input_size=3, hidden_size=8, depth=3), 6, 4, [4, 6, 1, 3], True),
    "packed_no_flush_proj": (dict(input_size=2, hidden_size=8, depth=4, proj_size=3), 5, 3,
                             [2, 5, 4], False),
    "no_flush": (dict(input_size=3, hidden_size=8, depth=4), 5, 2, None, False),
    "T1": (dict(input_size=3, hidden_size=8, depth=3), 1, 2, None, True),
    "T1_no_flush": (dict(input_size=3, hidden_size=8, depth=3), 1, 2, None, False),
    "B1": (dict(input_size=3, hidden_size=8, depth=3), 4, 1, None, True),
    "M1": (dict(input_size=2, hidden_size=1, depth=3, channel_norm=False), 4, 2, None, True),
    "batch_first_packed": (dict(input_size=3, hidden_size=8, depth=3, batch_first=True), 5, 3,
                           [3, 5, 2], True),
    "no_feedback_k5_packed": (dict(input_size=3, hidden_size=8, depth=3, kernel_size=5,
                                   feedback=False), 5, 3, [5, 2, 4], True),
    "M33": (dict(input_size=5, hidden_size=33, depth=3), 4, 3, [4, 1, 3], True),
}


@pytest.mark.parametrize("device", cpu_and_cuda(), indirect=True)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", list(CASES))
def test_cases(case, dtype, device):
    kwargs, T, B, lengths, flush = CASES[case]
    compare_fused_to_reference(dtype, T=T, B=B, seed=600 + len(case), lengths=lengths,
                               flush=flush, device=device, tensor_dim=3, **kwargs)


@pytest.mark.parametrize("threads", [1, 2])
def test_threaded_size(threads):
    """B*N rows split over several tasks (N = 16 locations at depth 4)."""
    with num_threads(threads):
        compare_fused_to_reference(F32, T=4, B=6, seed=700, lengths=[4, 1, 3, 4, 2, 4],
                                   input_size=5, hidden_size=24, depth=4, tensor_dim=3)


def test_op_gradcheck():
    module = make_tlstm(tlstm.TensorizedLSTM, F64, seed=750, input_size=2, hidden_size=2,
                        depth=2, tensor_dim=3)
    x, (h0, c0) = make_inputs(module, 3, 2, seed=751)
    p = dict(module.named_parameters())

    def f(x, h0, c0, w_ih, b_ih, w_hh, b_hh, gamma, beta):
        return tlstm.ops.tensorized_lstm_sequence(
            x, h0, c0, w_ih, b_ih, w_hh, b_hh, gamma, beta, torch.tensor([3, 2]), 2, 3, True,
            True, True)

    args = (x, h0, c0, p["weight_ih"], p["bias_ih"], p["weight_hh"], p["bias_hh"],
            p["norm_weight"], p["norm_bias"])
    assert torch.autograd.gradcheck(f, args)


def test_unbatched_input_and_state():
    fused = make_tlstm(tlstm.TensorizedLSTM, F64, seed=760, input_size=3, hidden_size=8,
                       depth=3, tensor_dim=3)
    ref = tlstm.reference.TensorizedLSTM(3, 8, depth=3, tensor_dim=3, dtype=F64)
    ref.load_state_dict(fused.state_dict())
    x = torch.randn(5, 3, dtype=F64)
    state = (torch.randn(3, 3, 8, dtype=F64), torch.randn(3, 3, 8, dtype=F64))
    y, (h, c) = fused(x, state)
    y_ref, (h_ref, c_ref) = ref(x, state)
    assert y.shape == (5, 8) and h.shape == (3, 3, 8)
    for got, want in ((y, y_ref), (h, h_ref), (c, c_ref)):
        assert rel_err(got, want) <= TOL[F64]


def test_wrong_state_shape_is_named():
    module = tlstm.TensorizedLSTM(3, 4, depth=2, tensor_dim=3)
    x = torch.randn(5, 2, 3)
    with pytest.raises(RuntimeError, match=r"= \(B, P, P, M\), got \[2, 2, 4\]"):
        module(x, (torch.zeros(2, 2, 4), torch.zeros(2, 2, 4)))


def test_op_names_a_state_of_the_other_shape():
    """The op reads the cell's shape from weight_hh: a [B, P, M] state with a 3-D weight_hh (or
    the converse) is an error naming both, never a reinterpretation."""
    module = tlstm.TensorizedLSTM(3, 4, depth=2, tensor_dim=3)
    p = dict(module.named_parameters())
    x = torch.randn(5, 2, 3)
    h = torch.zeros(2, 2, 4)
    with pytest.raises(RuntimeError, match=r"expected h0 of shape \[B, P, P, M\] for weight_hh"):
        tlstm.ops.tensorized_lstm_sequence(x, h, h, p["weight_ih"], p["bias_ih"],
                                           p["weight_hh"], p["bias_hh"], p["norm_weight"],
                                           p["norm_bias"], None, 2, 3, True, True, True)
    with pytest.raises(RuntimeError, match=r"expected weight_hh of shape \[G, M, K'\] \(the 2-D"):
        tlstm.ops.tensorized_lstm_sequence(x, h, h, p["weight_ih"], p["bias_ih"],
                                           p["weight_hh"][..., 0, 0], p["bias_hh"],
                                           p["norm_weight"], p["norm_bias"], None, 2, 3, True,
                                           True, True)
