"""Double backward (a gradient penalty; create_graph=True followed by another backward).

The fused kernels' gradients are not themselves differentiable. Differentiating them must be
an error that says so, not autograd's silent zeros for an op without a formula; cuDNN's
nn.LSTM has the same limit. First-order gradients taken with create_graph=True stay exact, and
the references, which the error message points to, support double backward."""
import pytest
import torch

import tlstm
import tensorized_helpers as th
from helpers import TOL, peephole_fused_and_reference, make_peephole_inputs, rel_err

F64 = torch.float64


def _peephole():
    fused, ref = peephole_fused_and_reference(F64, seed=51, input_size=3, hidden_size=4,
                                              num_layers=2, bidirectional=True, proj_size=2)
    x, hx = make_peephole_inputs(fused, 5, 2, 52, F64)
    return fused, ref, x, hx, "PeepholeLSTM"


def _tensorized():
    fused, ref = th.fused_and_reference(F64, seed=53, input_size=3, hidden_size=5, depth=3)
    x, state = th.make_inputs(fused, 5, 2, 54)
    return fused, ref, x, state, "TensorizedLSTM"


CELLS = {"peephole": _peephole, "tensorized": _tensorized}


def _first_order(module, x, state):
    out, (h_n, c_n) = module(x, state)
    loss = out.pow(2).sum() + h_n.sum() + c_n.pow(2).sum()
    leaves = [x, *state, *module.parameters()]
    return leaves, torch.autograd.grad(loss, leaves, create_graph=True)


@pytest.mark.parametrize("cell", list(CELLS))
def test_first_order_with_create_graph_is_exact(cell):
    fused, ref, x, state, _ = CELLS[cell]()
    _, got = _first_order(fused, x, state)
    _, want = _first_order(ref, x, state)
    for k, (g, w) in enumerate(zip(got, want)):
        assert rel_err(g, w) <= TOL[F64], (k, rel_err(g, w))


@pytest.mark.parametrize("cell", list(CELLS))
def test_double_backward_is_a_clear_error(cell):
    fused, _, x, state, name = CELLS[cell]()
    leaves, grads = _first_order(fused, x, state)
    penalty = sum(g.pow(2).sum() for g in grads)
    with pytest.raises(RuntimeError) as exc:
        torch.autograd.grad(penalty, leaves, allow_unused=True)
    msg = str(exc.value)
    assert f"tlstm.{name} does not support double backward" in msg, msg
    assert f"tlstm.reference.{name}" in msg, msg


@pytest.mark.parametrize("cell", list(CELLS))
def test_reference_supports_double_backward(cell):
    """The alternative the error names: the reference's second derivatives, checked by finite
    differences of its gradients."""
    _, ref, x, state, _ = CELLS[cell]()
    x = x.detach()[:3].requires_grad_()
    state = tuple(s.detach().requires_grad_() for s in state)

    def outputs(x, h0, c0):
        out, (h_n, c_n) = ref(x, (h0, c0))
        return out, h_n, c_n

    assert torch.autograd.gradgradcheck(outputs, (x, *state))
