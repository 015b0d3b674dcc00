"""A strict check of the CPU half-precision path, next to the contract's bound.

The contract's bound for float16 / bfloat16 (docs/parity.md: 2x the reference's own error in
that dtype, plus 1e-3, checked in test_half_and_autocast.py) is wide: for bfloat16 it reaches a
few percent, so an error of a few percent in a gradient passes it. On the CPU the kernels widen
the half types to float32, compute in float32 and round the results back. So this holds much
more tightly: the fused module's results equal the float32 reference's, computed from the very
same half-rounded inputs, weights and upstream gradients, up to roundings to the half dtype:
err(got, ref32) <= 3 * err(round(ref32), ref32) + 2e-5. The first term is what rounding ref32
itself to the half dtype costs (about 2e-3 for bfloat16, 3e-4 for float16), three times because
results are also rounded on their way (between layers, after the projection, the casts of
autocast; measured: at most 0.66 of this bound), and 2e-5 is twice the float32 bound. An error
of 1% in any result fails it, at bfloat16 as at float16.

Cases: both cells, half modules (float16, bfloat16) and float32 modules under CPU autocast to
either half dtype; every output, final state and gradient.
"""
import pytest
import torch

import tlstm
import tensorized_helpers as th
from helpers import randn, rel_err
from helpers import randomize_ as randomize_peephole_

F32 = torch.float32
HALF = {"f16": torch.float16, "bf16": torch.bfloat16}

CASES = {
    "peephole": (tlstm.PeepholeLSTM, tlstm.reference.PeepholeLSTM,
                 dict(input_size=4, hidden_size=10, num_layers=2, bidirectional=True,
                      proj_size=6), [7, 3, 5]),
    "tensorized": (tlstm.TensorizedLSTM, tlstm.reference.TensorizedLSTM,
                   dict(input_size=3, hidden_size=10, depth=3, kernel_size=3, proj_size=4),
                   [6, 2, 4]),
}


def _state_shapes(module, B):
    if isinstance(module, tlstm.TensorizedLSTM):
        return [(B, module.rows, module.hidden_size)] * 2
    d = module.num_layers * (2 if module.bidirectional else 1)
    r = module.proj_size or module.hidden_size
    return [(d, B, r), (d, B, module.hidden_size)]


def _run(module, x, state, lengths, up_dtype):
    """Outputs, final states and the gradients of a random linear loss (upstream drawn in
    float32, rounded to `up_dtype`, used in the output's dtype) for x, the state and every
    parameter."""
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(lengths),
                                                     enforce_sorted=False)
    out, (h, c) = module(packed, state)
    out = out.data
    loss = sum((t * randn(t.shape, 50 + k, F32).to(up_dtype).to(t.dtype)).sum()
               for k, t in enumerate((out, h, c)))
    names = [n for n, _ in module.named_parameters()]
    grads = torch.autograd.grad(loss, [x, *state] + [dict(module.named_parameters())[n]
                                                      for n in names])
    res = {"output": out, "h_n": h, "c_n": c}
    res.update(zip(["grad_input", "grad_h0", "grad_c0"] + ["grad_" + n for n in names], grads))
    return {k: v.detach() for k, v in res.items()}


@pytest.mark.parametrize("mode", ["module", "autocast"])
@pytest.mark.parametrize("dtype", list(HALF.values()), ids=list(HALF))
@pytest.mark.parametrize("cell", list(CASES))
def test_cpu_half_path_equals_float32_reference_up_to_rounding(cell, dtype, mode):
    fused_cls, ref_cls, kwargs, lengths = CASES[cell]
    fused = fused_cls(dtype=F32, **kwargs)
    if cell == "peephole":
        randomize_peephole_(fused, 61)
    else:
        th.randomize_tensorized_(fused, 61)
    with torch.no_grad():  # half-representable weights: what both runs see
        for p in fused.parameters():
            p.copy_(p.to(dtype).to(F32))
    if mode == "module":
        fused = fused.to(dtype)
    ref32 = ref_cls(dtype=F32, **kwargs)
    ref32.load_state_dict({k: v.to(F32) for k, v in fused.state_dict().items()})
    B, T = 3, 7
    x_half = randn((T, B, kwargs["input_size"]), 62, F32).to(dtype)
    state_half = [randn(s, 63 + k, F32, 0.5).to(dtype)
                  for k, s in enumerate(_state_shapes(fused, B))]

    def leaves(dt):
        return (x_half.to(dt).requires_grad_(),
                tuple(s.to(dt).requires_grad_() for s in state_half))

    want = _run(ref32, *leaves(F32), lengths, dtype)
    if mode == "module":
        got = _run(fused, *leaves(dtype), lengths, dtype)
    else:
        with torch.autocast("cpu", dtype=dtype):
            got = _run(fused, *leaves(F32), lengths, dtype)
        assert got["output"].dtype == dtype
    assert set(got) == set(want)
    failures = []
    for key in sorted(want):
        rounding = rel_err(want[key].to(dtype).to(F32), want[key])
        bound = 3 * rounding + 2e-5
        err = rel_err(got[key].to(F32), want[key])
        if not err <= bound:
            failures.append(f"{key}: {err:.3e} > {bound:.3e}")
    assert not failures, f"{cell} {mode} {dtype}: " + ", ".join(failures)
