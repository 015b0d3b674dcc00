"""Long sequences in inference against the float64 reference and the training-mode forward.

On the CPU the fused ops project the input a chunk of about 256 rows (steps x batch) at a time,
just before the steps that read it (the kernels' inference_chunk_rows / input_chunk_rows; the
tLSTM does so in training too). These cases span several chunks and end in a partial one (B=16:
16 steps a chunk; B=1: 256; B=300: one step), in both directions, with lengths, with a
projection, and for the tLSTM with one or several input taps (K=5, the 3-D cell) and the flush
steps past the input; in inference the tLSTM's CPU op computes the input's term of the taps
through the folded weights W_ih^T W_k where that is cheaper (I small against M), else through
x~ as in training (the wide_input case). Each checks, without autograd, the outputs and final
states against the float64 reference (docs/parity.md's bounds) and against the same module's
forward under autograd, which projects all steps at once for the peephole cell (equal within
the bound).
On CUDA (no chunks) the same checks run as a plain property.
"""
import pytest
import torch

from helpers import (
    TOL,
    assert_results_close,
    cpu_and_cuda,
    make_peephole_inputs,
    on_device,
    peephole_forward_backward,
    peephole_fused_and_reference,
    randn,
)
from tensorized_helpers import (
    as_f64_leaves,
    forward_backward,
    fused_and_reference,
    make_inputs,
    make_tlstm,
    op_args,
)

import tlstm

DTYPES = [torch.float64, torch.float32]

# module kwargs, T, B, lengths
PEEPHOLE_CASES = {
    "chunks_of_16_steps": (dict(input_size=5, hidden_size=7), 50, 16, None),
    "reverse": (dict(input_size=5, hidden_size=7, bidirectional=True), 41, 16, None),
    "lengths_two_layers_proj": (
        dict(input_size=4, hidden_size=6, num_layers=2, proj_size=3, bidirectional=True),
        37, 16, [37, 1, 16, 17, 33, 36, 2, 20, 15, 37, 9, 31, 32, 5, 16, 24]),
    "one_sequence": (dict(input_size=3, hidden_size=5), 300, 1, None),
    "one_step_a_chunk": (dict(input_size=3, hidden_size=5), 5, 300, None),
}

TENSORIZED_CASES = {
    "flush_past_the_input": (dict(input_size=5, hidden_size=8, depth=3), 40, 16, None),
    "lengths": (dict(input_size=5, hidden_size=8, depth=2),
                35, 16, [35, 1, 16, 17, 33, 34, 2, 20, 15, 35, 9, 31, 32, 5, 16, 24]),
    "two_input_taps_no_bias": (dict(input_size=4, hidden_size=8, depth=2, kernel_size=5,
                                    bias=False), 33, 16, None),
    "plane": (dict(input_size=4, hidden_size=8, depth=2, tensor_dim=3), 35, 16, None),
    "one_sequence": (dict(input_size=3, hidden_size=8, depth=2), 270, 1, None),
    # I >> M: the CPU projects x~ first (I << M, the other cases: the folded weights)
    "wide_input_projected": (dict(input_size=64, hidden_size=8, depth=2),
                             35, 16, [35, 1, 16, 17, 33, 34, 2, 20, 15, 35, 9, 31, 32, 5, 16, 24]),
}


def _close(got, want, tol, context):
    assert_results_close({k: got[k] for k in ("output", "h_n", "c_n")},
                         {k: want[k] for k in ("output", "h_n", "c_n")}, tol, context)


@pytest.mark.parametrize("device", cpu_and_cuda(), indirect=True)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", PEEPHOLE_CASES)
def test_peephole_inference(case, dtype, device):
    kwargs, T, B, lengths = PEEPHOLE_CASES[case]
    fused, ref = peephole_fused_and_reference(dtype, seed=3, **kwargs)
    fused.to(device)
    x, hx = make_peephole_inputs(fused, T, B, 13, dtype)
    x64 = x.detach().to("cpu", torch.float64)
    hx64 = tuple(h.detach().to("cpu", torch.float64) for h in hx)
    with torch.no_grad():
        got = peephole_forward_backward(fused, x.detach(), tuple(h.detach() for h in hx),
                                        lengths=lengths, grads=False)
        want = peephole_forward_backward(ref, x64, hx64, lengths=lengths, grads=False)
    trained = peephole_forward_backward(fused, x, hx, lengths=lengths, grads=False)
    _close(got, want, TOL[dtype], f"{case} {dtype} {device} vs reference")
    _close(got, trained, TOL[dtype], f"{case} {dtype} {device} vs the training forward")


@pytest.mark.parametrize("device", cpu_and_cuda(), indirect=True)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", TENSORIZED_CASES)
def test_tensorized_inference(case, dtype, device):
    kwargs, T, B, lengths = TENSORIZED_CASES[case]
    fused, ref = fused_and_reference(dtype, seed=5, **kwargs)
    fused.to(device)
    x, state = make_inputs(fused, T, B, 15, dtype, device="cpu")
    x64, state64 = as_f64_leaves(x, state)
    x, state = on_device(device, x.detach(), tuple(s.detach() for s in state))
    with torch.no_grad():
        got = forward_backward(fused, x, state, lengths=lengths, grads=False)
        want = forward_backward(ref, x64.detach(), tuple(s.detach() for s in state64),
                                lengths=lengths, grads=False)
    x.requires_grad_()
    trained = forward_backward(fused, x, state, lengths=lengths, grads=False)
    _close(got, want, TOL[dtype], f"{case} {dtype} {device} vs reference")
    _close(got, trained, TOL[dtype], f"{case} {dtype} {device} vs the training forward")


def _assert_padding_never_read(run, x, lengths, params, context):
    """run(inputs) -> the op's outputs, for inputs [T, B, I] padded past `lengths` with zeros or
    with NaN: equal results, bit for bit, in inference and in training (outputs and the
    gradients of a random loss for the inputs and `params`), each mode against its own run on
    zero padding (inference may compute the input's term another way: the tLSTM's folded
    projection)."""
    T = x.shape[0]
    real = (torch.arange(T).unsqueeze(1) < lengths.unsqueeze(0)).unsqueeze(2).to(x.device)
    padded = {"zeros": (x * real).detach(),
              "nan": torch.where(real, x, torch.full_like(x, float("nan"))).detach()}
    results = {}
    for name, inputs in padded.items():
        with torch.no_grad():
            results[name, "inference"] = run(inputs)
        leaf = inputs.clone().requires_grad_()
        out = run(leaf)
        loss = sum((t * randn(t.shape, 50 + k).to(x.device)).sum() for k, t in enumerate(out))
        results[name, "training"] = (*out, *torch.autograd.grad(loss, [leaf, *params]))
    for key, got in results.items():
        want = results["zeros", key[1]]
        for k, (a, b) in enumerate(zip(got, want)):
            assert torch.equal(a.detach(), b.detach()), (key, k, context)


@pytest.mark.parametrize("device", cpu_and_cuda(), indirect=True)
@pytest.mark.parametrize("flush", [True, False], ids=["flush", "no_flush"])
def test_tensorized_op_never_reads_the_padding(flush, device):
    """The op with per-sequence lengths (0 and T included) over several chunks of steps: the
    input past each length is never read (the flush steps read b_ih alone), so NaN padding and
    zero padding give the same results, in inference and in training, gradients included."""
    module = make_tlstm(tlstm.TensorizedLSTM, torch.float64, seed=9, input_size=3,
                        hidden_size=8, depth=3).to(device)
    T, B = 40, 16
    lengths = torch.tensor([40, 0, 16, 17, 33, 39, 2, 20, 15, 40, 9, 31, 32, 5, 16, 24])
    x, (h0, c0) = make_inputs(module, T, B, seed=19, device=device)
    h0, c0 = h0.detach(), c0.detach()

    def run(inputs):
        return tlstm.ops.tensorized_lstm_sequence(
            *op_args(module, inputs, h0, c0, lengths.to(device), flush))

    _assert_padding_never_read(run, x.detach(), lengths, list(module.parameters()),
                               (flush, device))


@pytest.mark.parametrize("device", cpu_and_cuda(), indirect=True)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_peephole_op_never_reads_the_padding(reverse, device):
    """As above for the peephole op over several chunks: NaN padding past each length gives
    the results of zero padding, in inference and in training, gradients included."""
    module = tlstm.PeepholeLSTM(3, 6, dtype=torch.float64).to(device)
    T, B = 40, 16
    lengths = torch.tensor([40, 1, 16, 17, 33, 39, 2, 20, 15, 40, 9, 31, 32, 5, 16, 24])
    x = randn((T, B, 3), 29).to(device)
    h0, c0 = randn((B, 6), 30).to(device), randn((B, 6), 31).to(device)
    params = list(module.parameters())  # W_ih, W_hh, b_ih, b_hh, w_ci, w_cf, w_co

    def run(inputs):
        return tlstm.ops.peephole_lstm_layer(inputs, h0, c0, *params[:4],
                                             torch.stack(params[4:]), None, lengths.to(device),
                                             reverse)

    _assert_padding_never_read(run, x, lengths, params, (reverse, device))
