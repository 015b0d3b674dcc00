"""Same inputs give bitwise-identical outputs and gradients on repeat, on each device: on the
CPU also at sizes where the kernels split every step over both threads (B*P rows of 4M+K gate
channels), on CUDA with both recurrences."""
import pytest
import torch

import tlstm
from helpers import assert_results_equal, cpu_threads_and_cuda, num_threads
from tensorized_helpers import F32, F64, forward_backward, make_inputs, make_tlstm

CASES = {
    "threaded": (dict(input_size=8, hidden_size=64, depth=4), 5, 8, None, True),
    "threaded_packed_no_flush": (dict(input_size=8, hidden_size=64, depth=4, kernel_size=5,
                                      proj_size=16), 5, 8, [5, 1, 3, 5, 2, 4, 5, 3], False),
    "threaded_nofeedback_nomemconv": (dict(input_size=8, hidden_size=64, depth=4,
                                           feedback=False, memory_conv=False), 4, 8, None, True),
    "small": (dict(input_size=3, hidden_size=5, depth=3), 6, 3, None, True),
    "k5_proj_packed": (dict(input_size=3, hidden_size=6, depth=4, kernel_size=5, proj_size=3),
                       6, 4, [6, 2, 5, 1], True),
    "M100": (dict(input_size=7, hidden_size=100, depth=3, kernel_size=5), 4, 3, None, False),
}


@pytest.mark.parametrize("device,threads", cpu_threads_and_cuda(), indirect=["device"])
@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", list(CASES))
def test_repeat_is_bitwise_identical(case, dtype, device, threads):
    kwargs, T, B, lengths, flush = CASES[case]
    module = make_tlstm(tlstm.TensorizedLSTM, dtype, seed=4, device=device, **kwargs)
    x, state = make_inputs(module, T, B, seed=5)
    with num_threads(threads):
        first = forward_backward(module, x, state, lengths=lengths, flush=flush, seed=6)
        for _ in range(2):
            again = forward_backward(module, x, state, lengths=lengths, flush=flush, seed=6)
            assert_results_equal(again, first, context=f"{device} {case} threads={threads}")


def test_fresh_module_same_weights_is_bitwise_identical():
    kwargs, T, B, lengths, flush = CASES["threaded_packed_no_flush"]
    a = make_tlstm(tlstm.TensorizedLSTM, F32, seed=7, **kwargs)
    b = make_tlstm(tlstm.TensorizedLSTM, F32, seed=7, **kwargs)
    x, state = make_inputs(a, T, B, seed=8)
    with num_threads(2):
        assert_results_equal(
            forward_backward(a, x, state, lengths=lengths, flush=flush, seed=9),
            forward_backward(b, x, state, lengths=lengths, flush=flush, seed=9))
