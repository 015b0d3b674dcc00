"""Same inputs give bitwise-identical outputs and gradients on repeat, on each device: on the
CPU also at sizes where the kernels split every step over several threads, on CUDA with both
recurrences (100 repeats there)."""
import pytest
import torch

from helpers import (
    assert_results_equal,
    cpu_threads_and_cuda,
    make_peephole_inputs,
    num_threads,
    peephole_forward_backward,
    peephole_fused_and_reference,
)

CASES = {
    "threaded_bidir_proj_packed": (
        dict(input_size=8, hidden_size=72, bidirectional=True, proj_size=40), 6, 40,
        [(5 * b) % 6 + 1 for b in range(40)]),
    "threaded_two_layers_identity": (
        dict(input_size=8, hidden_size=72, num_layers=2, activation="identity"), 5, 40, None),
    "row_split": (dict(input_size=5, hidden_size=8), 4, 600, None),
    "small": (dict(input_size=3, hidden_size=5), 6, 3, None),
    "packed_bidir_H33": (dict(input_size=3, hidden_size=33, bidirectional=True), 7, 5,
                         [2, 7, 7, 1, 4]),
}
# CUDA repeats more: a race (between blocks, or with another stream) shows only now and then
REPEATS = {"cpu": 3, "cuda": 100}


@pytest.mark.parametrize("device,threads", cpu_threads_and_cuda(), indirect=["device"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", list(CASES))
def test_repeat_is_bitwise_identical(case, dtype, device, threads):
    kwargs, T, B, lengths = CASES[case]
    fused, _ = peephole_fused_and_reference(dtype, seed=4, **kwargs)
    fused.to(device)
    x, hx = make_peephole_inputs(fused, T, B, 5, dtype)
    with num_threads(threads):
        first = peephole_forward_backward(fused, x, hx, lengths=lengths, seed=6)
        for _ in range(REPEATS[device]):
            again = peephole_forward_backward(fused, x, hx, lengths=lengths, seed=6)
            assert_results_equal(again, first, context=f"{device} {case} threads={threads}")


def test_fresh_module_same_weights_is_bitwise_identical(restore_threads):
    """A second module with the same weights (new packed-weight buffers) gives the same bits."""
    torch.set_num_threads(2)
    kwargs, T, B, lengths = CASES["threaded_bidir_proj_packed"]
    a, _ = peephole_fused_and_reference(torch.float32, seed=7, **kwargs)
    b, _ = peephole_fused_and_reference(torch.float32, seed=7, **kwargs)
    x, hx = make_peephole_inputs(a, T, B, 8, torch.float32)
    assert_results_equal(peephole_forward_backward(a, x, hx, lengths=lengths, seed=9),
                         peephole_forward_backward(b, x, hx, lengths=lengths, seed=9))
