"""torch.compile(fullgraph=True) traces the module without graph breaks and gives the eager
outputs and gradients."""
import pytest
import torch

import tlstm
from helpers import (
    TOL,
    assert_results_close,
    peephole_forward_backward,
    make_peephole_inputs,
    randomize_,
)


# batch_first=True hands the op a transposed (non-contiguous) input view, which exercises the
# shape/stride (fake) functions of the ops with non-contiguous arguments.
@pytest.mark.parametrize("batch_first", [False, True])
def test_compile_fullgraph_matches_eager(batch_first):
    torch._dynamo.reset()
    kwargs = dict(input_size=3, hidden_size=5, num_layers=2, bidirectional=True, proj_size=3,
                  batch_first=batch_first)
    model = tlstm.PeepholeLSTM(dtype=torch.float64, **kwargs)
    randomize_(model, 1)
    model.eval()
    compiled = torch.compile(model, fullgraph=True)
    x, hx = make_peephole_inputs(model, 6, 4, 2, torch.float64)
    want = peephole_forward_backward(model, x, hx, seed=3)
    got = peephole_forward_backward(compiled, x, hx, seed=3)
    # compiled parameters are the module's own: the names carry the _orig_mod. prefix
    got = {k.replace("_orig_mod.", ""): v for k, v in got.items()}
    assert_results_close(got, want, TOL[torch.float64], context="compiled vs eager")
    # a second call with new data reuses the graph and is still right
    x2, hx2 = make_peephole_inputs(model, 6, 4, 5, torch.float64)
    want2 = peephole_forward_backward(model, x2, hx2, seed=6)
    got2 = {k.replace("_orig_mod.", ""): v
            for k, v in peephole_forward_backward(compiled, x2, hx2, seed=6).items()}
    assert_results_close(got2, want2, TOL[torch.float64], context="compiled vs eager, 2nd call")
    torch._dynamo.reset()
