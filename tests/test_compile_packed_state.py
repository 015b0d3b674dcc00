"""torch.compile(fullgraph=True) of either module on a PackedSequence with an initial state: the
eager results, and a state of another batch size is the same clear error eager code gives
(the packed batch's size is data in a compiled graph, so it is checked when the graph runs)."""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import tlstm
from helpers import TOL, assert_results_close

F64 = torch.float64


def make(cell):
    torch.manual_seed(3)
    if cell == "peephole":
        module = tlstm.PeepholeLSTM(3, 4, num_layers=2, dtype=F64)
        return module, lambda B: (torch.randn(2, B, 4, dtype=F64), torch.randn(2, B, 4, dtype=F64))
    module = tlstm.TensorizedLSTM(3, 4, depth=2, dtype=F64)
    shape = (module.rows, 4)
    return module, lambda B: (torch.randn(B, *shape, dtype=F64), torch.randn(B, *shape, dtype=F64))


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("enforce_sorted", [True, False], ids=["sorted", "unsorted"])
@pytest.mark.parametrize("cell", ["peephole", "tensorized"])
def test_compiled_packed_input_with_state_equals_eager(cell, enforce_sorted):
    module, state_of = make(cell)
    compiled = torch.compile(module, fullgraph=True)
    x = torch.randn(5, 3, 3, dtype=F64, requires_grad=True)
    lengths = torch.tensor([5, 4, 2] if enforce_sorted else [2, 5, 4])
    state = tuple(s.requires_grad_() for s in state_of(3))

    def run(m):
        out, (h, c) = m(pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted), state)
        loss = sum((t * torch.linspace(-1, 1, t.numel(), dtype=F64).view(t.shape)).sum()
                   for t in (out.data, h, c))
        grads = torch.autograd.grad(loss, [x, *state, *module.parameters()])
        return dict(enumerate([out.data, h, c, *grads]))

    assert_results_close(run(compiled), run(module), TOL[F64], f"{cell} compiled vs eager")


@pytest.mark.parametrize("cell", ["peephole", "tensorized"])
def test_compiled_packed_input_refuses_a_state_of_another_batch(cell):
    module, state_of = make(cell)
    compiled = torch.compile(module, fullgraph=True)
    x = torch.randn(5, 3, 3, dtype=F64)
    packed = pack_padded_sequence(x, torch.tensor([2, 5, 4]), enforce_sorted=False)
    with torch.no_grad():
        compiled(packed, state_of(3))  # compiles; then other batch sizes, after a recompile too
        for batch in (4, 2, 5):
            with pytest.raises(RuntimeError, match="hold the packed batch's 3 sequences"):
                compiled(packed, state_of(batch))
