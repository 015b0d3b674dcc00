"""What only CUDA has: the kernels run on the current stream, 64-bit offsets past 2^31 gate
elements, and a clear error where TLSTM_CUDA_RECURRENCE=persistent forces the persistent kernel
on a size it cannot run. Skipped without a GPU (the `device` params carry the `cuda` marker);
the properties both devices share are in the files that check them on the CPU."""
import pytest
import torch

import tlstm
from helpers import (
    TOL,
    cuda_param,
    cuda_recurrences,
    make_peephole_inputs,
    peephole_forward_backward,
    peephole_fused_and_reference,
    rel_err,
)
from tensorized_helpers import make_tlstm


@pytest.mark.parametrize("device", cuda_recurrences(), indirect=True)
def test_peephole_non_default_stream(device):
    """The kernels run on the current stream: results on a side stream equal the default's."""
    kwargs = dict(input_size=16, hidden_size=200, bidirectional=True)
    fused, _ = peephole_fused_and_reference(torch.float32, seed=8, **kwargs)
    fused.to(device)
    x, hx = make_peephole_inputs(fused, 8, 64, 9, torch.float32)
    first = peephole_forward_backward(fused, x, hx, seed=10)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        again = peephole_forward_backward(fused, x, hx, seed=10)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    for k in first:
        assert torch.equal(first[k], again[k]), k


@pytest.mark.parametrize("device", [cuda_param("stepwise")], indirect=True)
def test_peephole_more_than_2_31_gate_elements(device):
    """T*B*4H > 2^31: 64-bit offsets, forward and backward. Rows are independent, so the last
    rows of the big batch (where 32-bit offsets would wrap) must equal the float64 reference run
    on those rows alone: outputs, final states and the input gradient."""
    T, B, I, H = 1000, 540, 4, 1024  # T*B*4H = 2.21e9 gate elements, 8.8 GB in float32
    free, _ = torch.cuda.mem_get_info()
    if free < 48 * 2**30:
        pytest.skip("needs 48 GiB of free GPU memory (the saved gates and their gradient)")
    torch.manual_seed(0)
    m = tlstm.PeepholeLSTM(I, H, device=device)
    x = torch.randn(T, B, I, device=device, requires_grad=True)
    upstream = torch.randn(T, B, H, device=device)
    out, (h, c) = m(x)
    (out * upstream).sum().backward()

    ref = tlstm.reference.PeepholeLSTM(I, H, dtype=torch.float64)
    ref.load_state_dict(m.state_dict())
    x_last = x[:, -2:].detach().cpu().double().requires_grad_()
    out_r, (h_r, c_r) = ref(x_last)
    (out_r * upstream[:, -2:].cpu().double()).sum().backward()
    assert rel_err(out[:, -2:], out_r) <= TOL[torch.float32]
    assert rel_err(h[:, -2:], h_r) <= TOL[torch.float32]
    assert rel_err(c[:, -2:], c_r) <= TOL[torch.float32]
    assert rel_err(x.grad[:, -2:], x_last.grad) <= TOL[torch.float32]


@pytest.mark.parametrize("device", [cuda_param("persistent")], indirect=True)
def test_peephole_forcing_persistent_where_it_cannot_run_is_a_clear_error(device):
    m = tlstm.PeepholeLSTM(4, 8192, dtype=torch.float64).to(device)  # W_hh slices exceed smem
    with pytest.raises(RuntimeError, match="persistent kernel cannot run"):
        m(torch.randn(2, 2, 4, device=device, dtype=torch.float64))


@pytest.mark.parametrize("device", [cuda_param("persistent")], indirect=True)
def test_tensorized_forcing_persistent_where_it_cannot_run_is_a_clear_error(device):
    """M=1024: a block's columns of W_col (32 x 3072 floats) exceed shared memory."""
    fused = make_tlstm(tlstm.TensorizedLSTM, torch.float32, seed=35, device=device,
                       input_size=3, hidden_size=1024, depth=2)
    with pytest.raises(RuntimeError, match="persistent kernel cannot run"):
        fused(torch.randn(2, 2, 3, device=device))
