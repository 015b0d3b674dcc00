"""Fused tlstm.PeepholeLSTM against the float64 step-by-step reference (docs/cells.md, section 1).

Outputs, h_n, c_n and every gradient (input, h0, c0, every parameter) under a random upstream
gradient: float64 within 1e-10, float32 (fused) against the float64 reference within 1e-5. The
module runs on each device (the `device` fixture: the CPU, and CUDA with both recurrences where
there is a GPU); the reference always runs on the CPU in float64. On CUDA also: float64 against
the CPU kernels within 1e-12.
"""
import zlib

import pytest
import torch

from helpers import (
    TOL,
    assert_results_close,
    compare_peephole_to_reference,
    cuda_param,
    cuda_recurrences,
    make_peephole_inputs,
    num_threads,
    on_device,
    pack,
    peephole_forward_backward,
    peephole_fused_and_reference,
    randn,
    rel_err,
)

DTYPES = [torch.float64, torch.float32]

# A covering set of the options (not the full product) and a few sizes (hidden sizes that are
# not multiples of 32, a large batch). Each entry: module kwargs, T, B, lengths.
CASES = {
    "base": (dict(input_size=3, hidden_size=5), 6, 4, None),
    "identity": (dict(input_size=3, hidden_size=5, activation="identity"), 6, 4, None),
    "two_layers": (dict(input_size=3, hidden_size=5, num_layers=2), 5, 3, None),
    "bidirectional": (dict(input_size=3, hidden_size=5, bidirectional=True), 6, 4, None),
    "batch_first_proj": (
        dict(input_size=4, hidden_size=6, proj_size=3, batch_first=True), 5, 3, None),
    "no_bias": (dict(input_size=3, hidden_size=5, bias=False), 6, 2, None),
    "no_bias_identity_proj": (
        dict(input_size=3, hidden_size=6, bias=False, activation="identity", proj_size=2),
        5, 3, None),
    "two_layers_bidir_proj": (
        dict(input_size=3, hidden_size=7, num_layers=2, bidirectional=True, proj_size=4),
        5, 3, None),
    "packed": (dict(input_size=3, hidden_size=5), 6, 4, [4, 6, 1, 5]),
    "packed_bidir": (dict(input_size=3, hidden_size=5, bidirectional=True), 6, 5,
                     [2, 6, 6, 1, 4]),
    "packed_batch_first_identity": (
        dict(input_size=2, hidden_size=4, batch_first=True, activation="identity"), 5, 3,
        [3, 5, 2]),
    "packed_two_layers_bidir_proj": (
        dict(input_size=3, hidden_size=6, num_layers=2, bidirectional=True, proj_size=2),
        7, 4, [7, 3, 5, 2]),
    "packed_everything": (
        dict(input_size=3, hidden_size=6, num_layers=2, bidirectional=True, proj_size=3,
             bias=False, batch_first=True, activation="identity"),
        6, 4, [1, 6, 4, 3]),
    "packed_shorter_than_T": (  # the longest sequence is shorter than the padded T
        dict(input_size=3, hidden_size=5, bidirectional=True), 8, 3, [5, 2, 3]),
    "identity_batch_first_no_bias": (
        dict(input_size=4, hidden_size=6, activation="identity", batch_first=True, bias=False),
        5, 3, None),
    "packed_two_layers_bidir_proj_H7": (
        dict(input_size=3, hidden_size=7, num_layers=2, bidirectional=True, proj_size=3),
        6, 4, [6, 2, 5, 1]),
    "packed_bidir_H33": (dict(input_size=3, hidden_size=33, bidirectional=True), 7, 5,
                         [2, 7, 7, 1, 4]),
    "no_peephole_H40": (dict(input_size=4, hidden_size=40, peephole=False), 5, 3, None),
    "large": (dict(input_size=16, hidden_size=200, bidirectional=True), 8, 64, None),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("case", list(CASES))
def test_configs(case, dtype, device):
    kwargs, T, B, lengths = CASES[case]
    compare_peephole_to_reference(dtype, T, B, seed=zlib.crc32(case.encode()) % 1000,
                                  lengths=lengths, device=device, **kwargs)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("B", range(1, 18))
def test_odd_batches(B, dtype, device):
    """Every batch size up to 17: the CPU's register tiles take 8 rows (AVX-512), 6 (AVX2) or 4
    of a GEMM at a time and the rest in tiles of 4, 2 and 1, so each remainder is one of these
    batch sizes (test_cpu_capability.py reruns this under every instruction set)."""
    compare_peephole_to_reference(dtype, 4, B, seed=B, device=device, input_size=5,
                                  hidden_size=9, bidirectional=True)


@pytest.mark.parametrize("device", cuda_recurrences(), indirect=True)
@pytest.mark.parametrize("case", ["packed_bidir_H33", "packed_two_layers_bidir_proj_H7"])
def test_cuda_float64_matches_cpu_kernels(case, device):
    """CUDA float64 against the fused CPU kernels in float64 on the same weights and data:
    <= 1e-12 (only the order of the sums differs)."""
    kwargs, T, B, lengths = CASES[case]
    fused, _ = peephole_fused_and_reference(torch.float64, seed=1, **kwargs)
    x, hx = make_peephole_inputs(fused, T, B, 2, torch.float64)
    cpu = peephole_forward_backward(fused, x, hx, lengths=lengths, seed=3)
    fused.to(device)
    got = peephole_forward_backward(fused, *on_device(device, x, hx), lengths=lengths, seed=3)
    assert got["output"].device.type == "cuda"
    assert_results_close(got, cpu, 1e-12, context=f"cuda vs cpu float64 {case}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("case", ["base", "two_layers_bidir_proj", "packed_bidir"])
def test_without_hx(case, dtype):
    """hx=None: no h0/c0 gradients, everything else still matches."""
    kwargs, T, B, lengths = CASES[case]
    compare_peephole_to_reference(dtype, T, B, seed=7, lengths=lengths, with_hx=False, **kwargs)


# Sizes big enough for the CPU kernels to split each step over threads
# (B * R * 4H >= 2 * 65536 multiply-adds), with H = 72 not a multiple of the 16 (float) or
# 8 (double) column alignment of the slices; projections split the backward GEMM over R
# columns (24, 40: not multiples of 16); B600_H8 and B40 with H <= 16 split over batch rows.
THREADED_CASES = {
    "B40_H72": (dict(input_size=8, hidden_size=72), 5, 40, None),
    "B40_H72_bidir_identity": (
        dict(input_size=8, hidden_size=72, bidirectional=True, activation="identity"), 4, 40,
        None),
    "B40_H72_proj24": (dict(input_size=8, hidden_size=72, proj_size=24), 4, 40, None),
    "B40_H72_packed": (
        dict(input_size=8, hidden_size=72, num_layers=2), 5, 40,
        [(7 * b) % 5 + 1 for b in range(40)]),
    "B40_H72_packed_bidir_proj": (
        dict(input_size=6, hidden_size=72, bidirectional=True, proj_size=40, batch_first=True),
        4, 40, [(3 * b) % 4 + 1 for b in range(40)]),
    "B3_H200": (  # few rows, many columns: several column slices per step
        dict(input_size=5, hidden_size=200, bias=False), 3, 3, None),
    "B600_H8": (  # many rows, one column panel: the step is split over batch rows
        dict(input_size=5, hidden_size=8), 3, 600, [(b % 3) + 1 for b in range(600)]),
}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("case", list(THREADED_CASES))
def test_threaded_sizes(case, dtype, threads, restore_threads):
    kwargs, T, B, lengths = THREADED_CASES[case]
    torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
    compare_peephole_to_reference(dtype, T, B, seed=3, lengths=lengths, **kwargs)


@pytest.mark.parametrize("threads", [3, 4])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("case", ["B40_H72_packed_bidir_proj", "B3_H200"])
def test_more_threads(case, dtype, threads, restore_threads):
    """Other thread counts give other partitions (3 or 4 column slices of 72 or 200 units)."""
    kwargs, T, B, lengths = THREADED_CASES[case]
    torch.set_num_threads(threads)
    compare_peephole_to_reference(dtype, T, B, seed=4, lengths=lengths, **kwargs)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("case", ["B40_H72_bidir_identity", "B40_H72_packed_bidir_proj"])
def test_one_and_two_threads_agree(case, dtype):
    """The thread count changes only the partition of the work, so results agree to rounding."""
    kwargs, T, B, lengths = THREADED_CASES[case]
    fused, _ = peephole_fused_and_reference(dtype, seed=5, **kwargs)
    x, hx = make_peephole_inputs(fused, T, B, 50, dtype)
    results = []
    for n in (1, 2):
        with num_threads(n):
            results.append(peephole_forward_backward(fused, x, hx, lengths=lengths, seed=9))
    assert_results_close(results[0], results[1], TOL[dtype], context=case)


@pytest.mark.parametrize("H", [1, 15, 17, 33])
def test_odd_hidden_sizes_threaded(H, restore_threads):
    """Hidden sizes around the panel widths, with a large batch so that the work is split."""
    torch.set_num_threads(2)
    for dtype in DTYPES:
        compare_peephole_to_reference(dtype, 3, 300, seed=H, input_size=4, hidden_size=H,
                                   lengths=[(b % 3) + 1 for b in range(300)])


@pytest.mark.parametrize("hidden_size", [1, 31, 33, 100])
def test_hidden_sizes_not_multiples_of_32(hidden_size, device):
    compare_peephole_to_reference(torch.float64, 6, 3, seed=5, device=device, input_size=5,
                                  hidden_size=hidden_size)


@pytest.mark.parametrize("device", [cuda_param("stepwise")], indirect=True)
def test_hidden_size_2048(device):
    """CUDA only (the float64 reference takes seconds on the CPU at this width), and stepwise
    only: the persistent kernel keeps W_hh in shared memory, where H = 2048 does not fit
    (test_cuda_streams_and_limits.py checks that forcing it is a clear error)."""
    compare_peephole_to_reference(torch.float64, 3, 2, seed=5, device=device, input_size=5,
                                  hidden_size=2048)


LONG_CASES = {
    "bidir_H6": dict(input_size=3, hidden_size=6, bidirectional=True),
    "H8": dict(input_size=3, hidden_size=8),
}


@pytest.mark.parametrize("case", list(LONG_CASES))
def test_float32_long_sequence_T1000(case, device):
    """float32 stays within 1e-5 of the float64 reference over T = 1000 steps."""
    compare_peephole_to_reference(torch.float32, 1000, 3, seed=11, device=device,
                                  **LONG_CASES[case])


def test_peephole_weights_matter():
    """Sanity of the comparison itself: changing one peephole vector changes the output by far
    more than the tolerance (so the parity tests would see a wrong peephole term)."""
    fused, ref = peephole_fused_and_reference(torch.float64, seed=1, input_size=3, hidden_size=5)
    x, hx = make_peephole_inputs(fused, 6, 4, 2, torch.float64)
    base = peephole_forward_backward(fused, x, hx, seed=3)
    for name in ("weight_ci_l0", "weight_cf_l0", "weight_co_l0"):
        with torch.no_grad():
            getattr(ref, name).mul_(-1.0)
        want = peephole_forward_backward(ref, x, hx, seed=3)
        with torch.no_grad():
            getattr(ref, name).mul_(-1.0)
        assert rel_err(base["output"], want["output"]) > 1e-4, name


@pytest.mark.parametrize("used", ["output", "h_n", "c_n", "output+c_n"])
@pytest.mark.parametrize("size", ["small", "threaded"])
def test_loss_on_some_results_only(used, size):
    """Gradients when the loss ignores some of output, h_n and c_n (their upstream gradients are
    then absent, not zero tensors)."""
    H, B = (5, 3) if size == "small" else (72, 40)
    kwargs = dict(input_size=4, hidden_size=H, num_layers=2, bidirectional=True,
                  proj_size=3 if size == "small" else 24)
    fused, ref = peephole_fused_and_reference(torch.float64, seed=8, **kwargs)
    x, hx = make_peephole_inputs(fused, 5, B, 9, torch.float64)
    lengths = [(b % 5) + 1 for b in range(B)]
    results = []
    for module in (fused, ref):
        out, (h_n, c_n) = module(pack(x, lengths, False), hx)
        terms = {"output": out.data, "h_n": h_n, "c_n": c_n}
        loss = sum((terms[k] * randn(terms[k].shape, 3 + i, torch.float64)).sum()
                   for i, k in enumerate(used.split("+")))
        results.append(torch.autograd.grad(loss, [x, *hx, *module.parameters()],
                                           allow_unused=True))
    for k, (a, b) in enumerate(zip(*results)):
        if b is None:
            assert a is None or a.abs().max() == 0, k
            continue
        assert a is not None, k
        assert rel_err(a, b) <= TOL[torch.float64], k
