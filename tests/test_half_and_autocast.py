"""float16 / bfloat16 modules on each device, and autocast on the CPU and on CUDA, for both
cells.

nn.LSTM runs the half types on the CPU and, under autocast, runs in the autocast dtype; the
fused modules do the same (on the CPU the kernels compute half types in float32). docs/parity.md's
bound for the half types: each result's error against the float64 reference is at most twice
the error of the reference module run the same way (in that dtype, on that device), plus 1e-3."""
import pytest
import torch

import tlstm
import tensorized_helpers as th
from helpers import (assert_within_half_bound, cuda_recurrences, make_peephole_inputs,
                     peephole_forward_backward, peephole_fused_and_reference, rel_err)

HALF = [torch.float16, torch.bfloat16]
# ("device", autocast dtype), with indirect=["device"]: the CPU under both half types, CUDA
# (each recurrence) under float16
AUTOCAST = [pytest.param("cpu", torch.bfloat16, id="cpu-bf16"),
            pytest.param("cpu", torch.float16, id="cpu-f16")] + [
    pytest.param(p.values[0], torch.float16, id=f"{p.values[0]}-f16", marks=p.marks)
    for p in cuda_recurrences()]

# module kwargs, T, B, lengths
PEEPHOLE_CASES = {
    "base": (dict(input_size=5, hidden_size=12), 7, 3, None),
    "bidir_two_layers_proj_packed": (
        dict(input_size=4, hidden_size=10, num_layers=2, bidirectional=True, proj_size=6),
        7, 3, [7, 3, 5],
    ),
    "H5": (dict(input_size=3, hidden_size=5), 6, 4, None),
    "bidir_two_layers_proj_packed_H7": (
        dict(input_size=3, hidden_size=7, num_layers=2, bidirectional=True, proj_size=3),
        6, 4, [6, 2, 5, 1],
    ),
    "large": (dict(input_size=16, hidden_size=200, bidirectional=True), 8, 64, None),
}
# module kwargs, T, B, lengths, flush
TENSORIZED_CASES = {
    "base": (dict(input_size=4, hidden_size=12, depth=3), 6, 3, None, True),
    "k5_proj_packed": (dict(input_size=3, hidden_size=10, depth=2, kernel_size=5, proj_size=4),
                       6, 3, [6, 2, 4], True),
    "no_flush_flags_off": (dict(input_size=3, hidden_size=9, depth=3, feedback=False,
                                memory_conv=False), 6, 3, None, False),
    "M5": (dict(input_size=3, hidden_size=5, depth=3), 6, 4, None, True),
    "k5_proj_packed_depth4": (dict(input_size=3, hidden_size=6, depth=4, kernel_size=5,
                                   proj_size=3), 6, 4, [6, 2, 5, 1], True),
    "packed_no_flush": (dict(input_size=4, hidden_size=8, depth=3), 7, 5, [2, 7, 7, 1, 4],
                        False),
    "M33": (dict(input_size=5, hidden_size=33, depth=3), 5, 5, [5, 1, 4, 2, 5], True),
    "plane": (dict(input_size=4, hidden_size=12, depth=3, tensor_dim=3), 5, 3, [5, 2, 4], True),
    "plane_k5_no_flush": (dict(input_size=3, hidden_size=10, depth=2, kernel_size=5,
                               tensor_dim=3), 5, 2, None, False),
}


def _leaves(x, hx, dtype, device="cpu"):
    x = x.detach().to(device, dtype).requires_grad_()
    hx = None if hx is None else tuple(h.detach().to(device, dtype).requires_grad_() for h in hx)
    return x, hx


def _compare_runs(run, ref64, fused, ref_low, x64, state64, dtype, device, autocast):
    """run(module, x, state) -> results, for the float64 reference on (x64, state64), the fused
    module (under autocast to `dtype` if `autocast`, in its own dtype) and the reference module
    in `dtype`, each on its own copy of the inputs. Autocast casts the op's every floating
    argument, so the reference in `dtype` is also its baseline. Returns got, base, want."""
    want = run(ref64, x64, state64)
    with torch.autocast(device, dtype=dtype, enabled=autocast):
        got = run(fused, *_leaves(x64, state64, next(fused.parameters()).dtype, device))
    base = run(ref_low, *_leaves(x64, state64, dtype, device))
    return got, base, want


# ---- the peephole LSTM -------------------------------------------------------------------------


def _peephole_runs(case, dtype, device="cpu", autocast=False):
    """got, base, want (see _compare_runs) of one case, the fused module in `dtype`, or in
    float32 under autocast to `dtype`."""
    kwargs, T, B, lengths = PEEPHOLE_CASES[case]
    _, ref64 = peephole_fused_and_reference(torch.float64, seed=31, **kwargs)
    fused_dtype = torch.float32 if autocast else dtype
    fused = tlstm.PeepholeLSTM(**kwargs).to(device, fused_dtype)
    ref_low = tlstm.reference.PeepholeLSTM(**kwargs).to(device, dtype)
    for m in (fused, ref_low):
        m.load_state_dict(ref64.state_dict())
        m.train(False)
    x64, hx64 = make_peephole_inputs(ref64, T, B, 32, torch.float64)

    def run(module, x, hx):
        return peephole_forward_backward(module, x, hx, lengths=lengths, seed=33)

    return _compare_runs(run, ref64, fused, ref_low, x64, hx64, dtype, device, autocast)


@pytest.mark.parametrize("dtype", HALF, ids=["f16", "bf16"])
@pytest.mark.parametrize("case", list(PEEPHOLE_CASES))
def test_peephole_half_module(case, dtype, device):
    got, base, want = _peephole_runs(case, dtype, device)
    for key in ("output", "h_n", "c_n", "grad_input", "grad_weight_hh_l0"):
        assert got[key].dtype == dtype, (key, got[key].dtype)
        assert got[key].device.type == device, (key, got[key].device)
    assert_within_half_bound(got, base, want, f"{device} {dtype} {case}")


@pytest.mark.parametrize("device,dtype", AUTOCAST, indirect=["device"])
@pytest.mark.parametrize("case", list(PEEPHOLE_CASES))
def test_peephole_under_autocast(case, device, dtype):
    """As nn.LSTM under autocast: outputs and states in the autocast dtype, parameter
    gradients in the parameters' float32."""
    got, base, want = _peephole_runs(case, dtype, device, autocast=True)
    for key in ("output", "h_n", "c_n"):
        assert got[key].dtype == dtype, (key, got[key].dtype)
    assert got["grad_weight_ih_l0"].dtype == torch.float32
    assert_within_half_bound(got, base, want, f"{device} autocast {dtype} {case}")


@pytest.mark.parametrize("device,dtype", AUTOCAST, indirect=["device"])
def test_peephole_autocast_dtypes_match_nn_lstm(device, dtype):
    lstm = torch.nn.LSTM(4, 6, num_layers=2, device=device)
    ours = tlstm.PeepholeLSTM.from_lstm(lstm)
    x = torch.randn(5, 3, 4, device=device).to(dtype)  # nn.LSTM on the CPU wants it cast already
    with torch.autocast(device, dtype=dtype):
        want_out, (want_h, want_c) = lstm(x)
        out, (h, c) = ours(x)
    assert (out.dtype, h.dtype, c.dtype) == (want_out.dtype, want_h.dtype, want_c.dtype)
    tol = 2e-2 if dtype == torch.bfloat16 else 2e-3
    assert rel_err(out, want_out) < tol, rel_err(out, want_out)


def test_float64_is_left_alone_under_autocast():
    """Autocast casts float32 and the half types, never float64 (as for nn.LSTM)."""
    fused, ref = peephole_fused_and_reference(torch.float64, seed=34, input_size=3, hidden_size=5)
    x, hx = make_peephole_inputs(fused, 4, 2, 35, torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, (h, c) = fused(x, hx)
    want, _ = ref(x, hx)
    assert out.dtype == torch.float64 and rel_err(out, want) <= 1e-10


# ---- the tensorized LSTM ----------------------------------------------------------------------


def _tensorized_runs(case, dtype, device="cpu", autocast=False):
    """As _peephole_runs, for the tensorized LSTM."""
    kwargs, T, B, lengths, flush = TENSORIZED_CASES[case]
    _, ref64 = th.fused_and_reference(torch.float64, seed=41, **kwargs)
    fused_dtype = torch.float32 if autocast else dtype
    fused = tlstm.TensorizedLSTM(**kwargs).to(device, fused_dtype)
    ref_low = tlstm.reference.TensorizedLSTM(**kwargs).to(device, dtype)
    for m in (fused, ref_low):
        m.load_state_dict(ref64.state_dict())
    x64, state64 = th.make_inputs(ref64, T, B, 42)

    def run(module, x, state):
        return th.forward_backward(module, x, state, lengths=lengths, flush=flush, seed=43)

    return _compare_runs(run, ref64, fused, ref_low, x64, state64, dtype, device, autocast)


@pytest.mark.parametrize("dtype", HALF, ids=["f16", "bf16"])
@pytest.mark.parametrize("case", list(TENSORIZED_CASES))
def test_tensorized_half_module(case, dtype, device):
    got, base, want = _tensorized_runs(case, dtype, device)
    for key in ("output", "h_n", "c_n", "grad_input", "grad_weight_hh"):
        assert got[key].dtype == dtype, (key, got[key].dtype)
        assert got[key].device.type == device, (key, got[key].device)
    assert_within_half_bound(got, base, want, f"{device} {dtype} {case}")


@pytest.mark.parametrize("device,dtype", AUTOCAST, indirect=["device"])
@pytest.mark.parametrize("case", list(TENSORIZED_CASES))
def test_tensorized_under_autocast(case, device, dtype):
    got, base, want = _tensorized_runs(case, dtype, device, autocast=True)
    for key in ("output", "h_n", "c_n"):
        assert got[key].dtype == dtype, (key, got[key].dtype)
    assert got["grad_weight_hh"].dtype == torch.float32
    assert_within_half_bound(got, base, want, f"{device} autocast {dtype} {case}")
