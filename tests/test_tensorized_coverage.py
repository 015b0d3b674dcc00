"""tLSTM cases the rest of the suite did not reach:

- float32 parity over a sequence of hundreds of steps (the float32 bound of docs/parity.md is
  promised for T <= 1000; the grids elsewhere stop at T = 8), with and without lengths;
- channel norm at M = 1 (one channel: mean = z, variance 0, so CN(z) = beta), against the
  reference and the independent step;
- non-contiguous states and weights handed to the module (set_ to strided views, and
  functional_call), against the contiguous run and the reference;
- torch.compile(fullgraph=True) of the module with packed input (enforce_sorted False and True).
"""
import pytest
import torch
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence

import tlstm
from helpers import TOL, assert_results_close, noncontiguous
from tensorized_helpers import (
    F32,
    F64,
    as_f64_leaves,
    compare_fused_to_reference,
    forward_backward,
    fused_and_reference,
    make_inputs,
    make_tlstm,
    spec_tlstm,
)


@pytest.mark.parametrize("lengths", [None, [250, 173]], ids=["full", "lengths"])
def test_float32_parity_over_hundreds_of_steps(lengths):
    """T = 250, float32 against the float64 reference: outputs, states, every gradient
    within 1e-5."""
    compare_fused_to_reference(F32, T=250, B=2, seed=70, lengths=lengths, input_size=3,
                               hidden_size=5, depth=3)


ONE_CHANNEL_F32 = pytest.mark.xfail(strict=True, reason=(
    "contract gap: at M=1 channel norm divides by sqrt(0 + 1e-5), which amplifies float32 "
    "rounding ~300x; grad_weight_ih is off by 2.4e-5 (> 1e-5), and the float32 reference itself "
    "by up to 2.3e-5, so no float32 implementation meets docs/parity.md's bound here"))


@pytest.mark.parametrize("dtype", [F64, pytest.param(F32, marks=ONE_CHANNEL_F32)],
                         ids=["f64", "f32"])
def test_channel_norm_with_one_channel(dtype):
    compare_fused_to_reference(dtype, T=6, B=2, seed=71, input_size=2, hidden_size=1, depth=3)
    compare_fused_to_reference(dtype, T=6, B=3, seed=72, lengths=[6, 2, 4], input_size=2,
                               hidden_size=1, depth=2, kernel_size=5, proj_size=2)


def test_channel_norm_with_one_channel_against_the_independent_step():
    fused, _ = fused_and_reference(F64, seed=73, input_size=2, hidden_size=1, depth=3)
    x, state = make_inputs(fused, 5, 2, 74)
    with torch.no_grad():
        out, (h, c) = fused(x, state)
        want = spec_tlstm(fused, x, *state)
    assert_results_close({"o": out, "h": h, "c": c}, dict(zip("ohc", want)), TOL[F64])
    # CN over one channel is beta: the outputs do not depend on gamma
    with torch.no_grad():
        fused.norm_weight.mul_(-3.0)
        out2, _ = fused(x, state)
    assert_results_close({"o": out2}, {"o": out}, TOL[F64])


KWARGS = dict(input_size=3, hidden_size=6, depth=3, proj_size=2)


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
def test_noncontiguous_states_and_weights_set_(dtype):
    fused, ref = fused_and_reference(dtype, seed=75, **KWARGS)
    x, state = make_inputs(fused, 5, 3, 76)
    want = forward_backward(fused, x, state, lengths=[5, 2, 4], seed=77)
    state_nc = tuple(noncontiguous(s).requires_grad_() for s in state)
    with torch.no_grad():
        for _, p in fused.named_parameters():
            v = noncontiguous(p)
            p.set_(v.untyped_storage(), v.storage_offset(), v.shape, v.stride())
    assert not any(p.is_contiguous() for p in fused.parameters())
    got = forward_backward(fused, x, state_nc, lengths=[5, 2, 4], seed=77)
    assert_results_close(got, want, TOL[dtype], "non-contiguous vs contiguous")
    x64, state64 = as_f64_leaves(x, state)
    assert_results_close(got, forward_backward(ref, x64, state64, lengths=[5, 2, 4], seed=77),
                         TOL[dtype], "non-contiguous vs the float64 reference")


def test_noncontiguous_weights_functional_call():
    fused, ref = fused_and_reference(F64, seed=78, **KWARGS)
    x, state = make_inputs(fused, 5, 3, 79)
    params = {n: noncontiguous(p).requires_grad_() for n, p in fused.named_parameters()}
    state_nc = tuple(noncontiguous(s).requires_grad_() for s in state)
    out, (h, c) = functional_call(fused, params, (x, state_nc))
    out_r, (h_r, c_r) = ref(x, state)
    gs = [torch.randn(t.shape, dtype=F64, generator=torch.Generator().manual_seed(k))
          for k, t in enumerate((out, h, c))]
    got = torch.autograd.grad(sum((t * g).sum() for t, g in zip((out, h, c), gs)),
                              [x, *state_nc, *params.values()])
    want = torch.autograd.grad(sum((t * g).sum() for t, g in zip((out_r, h_r, c_r), gs)),
                               [x, *state, *ref.parameters()])
    assert_results_close(dict(enumerate([out, h, c, *got])),
                         dict(enumerate([out_r, h_r, c_r, *want])), TOL[F64])


@pytest.mark.parametrize("with_state", [False, True], ids=["no_state", "state"])
@pytest.mark.parametrize("enforce_sorted", [False, True], ids=["unsorted", "sorted"])
def test_compile_fullgraph_packed_input(enforce_sorted, with_state):
    """torch.compile(fullgraph=True) of the module called with a PackedSequence: eager's
    outputs, final states and gradients."""
    torch._dynamo.reset()
    try:
        model = make_tlstm(tlstm.TensorizedLSTM, F64, seed=80, **KWARGS)
        compiled = torch.compile(model, fullgraph=True)
        lengths = torch.tensor([5, 4, 2] if enforce_sorted else [2, 5, 4])
        x, state = make_inputs(model, 5, 3, 81, with_state=with_state)

        def run(module):
            data = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
            out, (h, c) = module(data, state)
            loss = sum((t * torch.linspace(-1, 1, t.numel(), dtype=F64).view(t.shape)).sum()
                       for t in (out.data, h, c))
            grads = torch.autograd.grad(loss, [x, *(state or ()), *model.parameters()])
            return dict(enumerate([out.data, h, c, *grads]))

        assert_results_close(run(compiled), run(model), TOL[F64], "compiled vs eager")
    finally:
        torch._dynamo.reset()
