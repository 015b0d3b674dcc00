"""Same inputs give bitwise-identical outputs and gradients on repeat, also at sizes where the
CPU kernels split every step over several threads."""
import pytest
import torch

from helpers import (
    assert_results_equal,
    peephole_forward_backward,
    peephole_fused_and_reference,
    make_peephole_inputs,
)

CASES = {
    "threaded_bidir_proj_packed": (
        dict(input_size=8, hidden_size=72, bidirectional=True, proj_size=40), 6, 40,
        [(5 * b) % 6 + 1 for b in range(40)]),
    "threaded_two_layers_identity": (
        dict(input_size=8, hidden_size=72, num_layers=2, activation="identity"), 5, 40, None),
    "row_split": (dict(input_size=5, hidden_size=8), 4, 600, None),
    "small": (dict(input_size=3, hidden_size=5), 6, 3, None),
}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", list(CASES))
def test_repeat_is_bitwise_identical(case, dtype, threads, restore_threads):
    torch.set_num_threads(threads)
    kwargs, T, B, lengths = CASES[case]
    fused, _ = peephole_fused_and_reference(dtype, seed=4, **kwargs)
    x, hx = make_peephole_inputs(fused, T, B, 5, dtype)
    first = peephole_forward_backward(fused, x, hx, lengths=lengths, seed=6)
    for _ in range(3):
        again = peephole_forward_backward(fused, x, hx, lengths=lengths, seed=6)
        assert_results_equal(again, first, context=f"{case} threads={threads}")


def test_fresh_module_same_weights_is_bitwise_identical(restore_threads):
    """A second module with the same weights (new packed-weight buffers) gives the same bits."""
    torch.set_num_threads(2)
    kwargs, T, B, lengths = CASES["threaded_bidir_proj_packed"]
    a, _ = peephole_fused_and_reference(torch.float32, seed=7, **kwargs)
    b, _ = peephole_fused_and_reference(torch.float32, seed=7, **kwargs)
    x, hx = make_peephole_inputs(a, T, B, 8, torch.float32)
    assert_results_equal(peephole_forward_backward(a, x, hx, lengths=lengths, seed=9),
                         peephole_forward_backward(b, x, hx, lengths=lengths, seed=9))
