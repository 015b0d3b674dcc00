"""Gates saturate as torch's do: pre-activations far beyond exp's range give sigmoid exactly 0
or 1 and tanh exactly -1 or 1 in the kernels, as in the reference (torch.sigmoid, torch.tanh),
so that inputs of any finite size stay within the float64 bound (docs/parity.md), gradients
included."""
import pytest
import torch

import tlstm
from helpers import TOL, peephole_forward_backward, peephole_fused_and_reference, rel_err


@pytest.mark.parametrize("scale", [1e3, 1e300])
def test_peephole_float64_with_huge_inputs_matches_reference(scale):
    fused, ref = peephole_fused_and_reference(torch.float64, seed=3, input_size=3, hidden_size=6)
    x = (torch.randn(5, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
         * scale).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    got = peephole_forward_backward(fused, x, seed=5)
    want = peephole_forward_backward(ref, x_ref, seed=5)
    for key in want:
        assert rel_err(got[key], want[key]) <= TOL[torch.float64], key


def test_exact_saturation_of_a_single_gate():
    """sigmoid(-720) is 0 in torch (exp(720) overflows to inf); the kernels' output gate is
    exactly 0 there, so the hidden state is exactly 0."""
    m = tlstm.PeepholeLSTM(1, 1, bias=False, peephole=False, dtype=torch.float64)
    with torch.no_grad():
        m.weight_ih_l0.copy_(torch.tensor([[1.0], [1.0], [1.0], [-720.0]]))
        m.weight_hh_l0.zero_()
    out, _ = m(torch.ones(1, 1, 1, dtype=torch.float64))
    assert out.item() == 0.0, out.item()


@pytest.mark.parametrize("scale", [1e3, 1e300])
def test_tensorized_float64_with_huge_inputs_matches_reference(scale):
    torch.manual_seed(6)
    kwargs = dict(input_size=3, hidden_size=5, depth=2, channel_norm=False, dtype=torch.float64)
    fused = tlstm.TensorizedLSTM(**kwargs)
    ref = tlstm.reference.TensorizedLSTM(**kwargs)
    ref.load_state_dict(fused.state_dict())
    x = torch.randn(4, 2, 3, dtype=torch.float64) * scale
    results = []
    for module in (fused, ref):
        xi = x.clone().requires_grad_()
        y, (h, c) = module(xi)
        g = torch.autograd.grad((y * y.detach().sign()).sum() + h.sum() + c.sum(),
                                [xi, *module.parameters()])
        results.append([y, h, c, *g])
    for k, (a, b) in enumerate(zip(*results)):
        assert rel_err(a, b) <= TOL[torch.float64], k
