"""Shared helpers of the tests (tests/conftest.py keeps only pytest's hooks and fixtures;
tests/tensorized_helpers.py builds on this module for the tensorized LSTM).

Accuracy is measured as in docs/parity.md: error = ||out - ref|| / ||ref|| against the float64
reference (tlstm.reference.PeepholeLSTM), for outputs, final states and every gradient.
"""
from __future__ import annotations

import contextlib
import math

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import tlstm
from tlstm.parity import rel_err  # noqa: F401  (the measure of docs/parity.md)

# Tolerances of the contract (relative error against the float64 reference).
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


# ---- error measure ----------------------------------------------------------------------------


def assert_rel_close(a, b, tol, what=""):
    err = rel_err(a, b)
    # `not err <= tol` also fails on NaN
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e}"


def assert_within_half_bound(got: dict, base: dict, want: dict, context: str = ""):
    """docs/parity.md's bound for float16 / bfloat16: each result's error against the float64
    reference `want` is at most twice the error of `base` (the reference module run in that
    dtype), plus 1e-3. Every entry is checked and all failures are reported together."""
    assert set(got) == set(want) == set(base)
    failures = []
    for key in sorted(want):
        bound = 2 * rel_err(base[key], want[key]) + 1e-3
        err = rel_err(got[key], want[key])
        if not err <= bound:
            failures.append(f"{key}: {err:.3e} > {bound:.3e}")
    assert not failures, f"{context}: " + ", ".join(failures)


def assert_results_close(got: dict, ref: dict, tol: float, context: str = ""):
    """Compares every entry of two result dicts (see peephole_forward_backward); keys must match."""
    assert set(got) == set(ref), f"{context}: keys differ: {sorted(set(got) ^ set(ref))}"
    failures = []
    for key in sorted(ref):
        err = rel_err(got[key], ref[key])
        if not err <= tol:
            failures.append(f"{key}: {err:.3e}")
    assert not failures, f"{context}: relative error > {tol:.1e} for " + ", ".join(failures)


def assert_results_equal(got: dict, ref: dict, context: str = ""):
    """Bitwise equality of every entry of two result dicts."""
    assert set(got) == set(ref)
    bad = [k for k in sorted(ref) if not torch.equal(got[k], ref[k])]
    assert not bad, f"{context}: not bitwise equal: {bad}"


# ---- random data ------------------------------------------------------------------------------


def make_gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def randn(shape, seed, dtype=torch.float64, scale=1.0):
    """Deterministic float64 normal numbers (cast to dtype): the same seed gives the same
    values for every dtype (rounded to float32 for float32)."""
    return (torch.randn(shape, generator=make_gen(seed), dtype=torch.float64) * scale).to(dtype)


def randomize_(module: torch.nn.Module, seed: int, peephole_scale: float = 0.7) -> None:
    """Fresh random weights: standard LSTM weights U(-k, k) with k = 1/sqrt(H) and peephole
    weights U(-s, s) with s = peephole_scale (large enough to matter)."""
    g = make_gen(seed)
    k = 1.0 / math.sqrt(module.hidden_size)
    with torch.no_grad():
        for name, p in module.named_parameters():
            s = peephole_scale if name.startswith(("weight_ci", "weight_cf", "weight_co")) else k
            v = (torch.rand(p.shape, generator=g, dtype=torch.float64) * 2 - 1) * s
            p.copy_(v)


def state_sizes(module, batch):
    d = 2 if module.bidirectional else 1
    real = module.proj_size if module.proj_size > 0 else module.hidden_size
    return (module.num_layers * d, batch, real), (module.num_layers * d, batch, module.hidden_size)


def make_peephole_inputs(module, T, B, seed, dtype, batch_first=None, lengths=None, with_hx=True,
                         device=None):
    """Leaf tensors x [T, B, I] (or [B, T, I]), h0, c0 (requires_grad) and the lengths.

    The values are drawn in float64 from `seed` on the CPU, cast to `dtype` and moved to
    `device` (the module's by default), so the same seed gives the same data for the float32
    module and the float64 reference, on any device (after a round trip through float32 use
    `round_through`)."""
    batch_first = module.batch_first if batch_first is None else batch_first
    device = next(module.parameters()).device if device is None else device
    shape = (B, T, module.input_size) if batch_first else (T, B, module.input_size)

    def leaf(shape, seed, scale=1.0):
        return randn(shape, seed, dtype, scale).to(device).requires_grad_()

    x = leaf(shape, seed)
    hx = None
    if with_hx:
        hs, cs = state_sizes(module, B)
        hx = (leaf(hs, seed + 1, 0.5), leaf(cs, seed + 2, 0.5))
    return x, hx


def pack(x, lengths, batch_first):
    return pack_padded_sequence(
        x, torch.as_tensor(lengths, dtype=torch.int64), batch_first=batch_first,
        enforce_sorted=False,
    )


# ---- running a module -------------------------------------------------------------------------


def peephole_forward_backward(module, x, hx=None, lengths=None, seed=1234, grads=True):
    """Runs `module` (packing x with `lengths` when given), then back-propagates a random
    upstream gradient (drawn from `seed` in float64, cast to the output dtype) through the
    output and both final states.

    Returns a dict: output, h_n, c_n and grad_input, grad_h0, grad_c0, grad_<param> for every
    parameter (missing gradients are an error: everything must receive one).
    """
    inp = pack(x, lengths, module.batch_first) if lengths is not None else x
    out, (h_n, c_n) = module(inp, hx)
    out_t = out.data if isinstance(out, PackedSequence) else out
    res = {"output": out_t, "h_n": h_n, "c_n": c_n}
    if isinstance(out, PackedSequence):
        # compare the packed rows in the original batch order via the unsorted indices
        res["batch_sizes"] = out.batch_sizes.to(torch.float64)
        if out.unsorted_indices is not None:
            res["unsorted_indices"] = out.unsorted_indices.to(torch.float64)
    if not grads:
        return {k: v.detach() for k, v in res.items()}
    dtype = out_t.dtype
    # drawn in float64 and rounded through float32: identical values for every dtype
    to = dict(device=out_t.device, dtype=dtype)
    g_out = randn(out_t.shape, seed, torch.float32).to(**to)
    g_h = randn(h_n.shape, seed + 1, torch.float32).to(**to)
    g_c = randn(c_n.shape, seed + 2, torch.float32).to(**to)
    loss = (out_t * g_out).sum() + (h_n * g_h).sum() + (c_n * g_c).sum()
    res.update(gradients_of(loss, module, x, hx))
    return {k: v.detach() for k, v in res.items()}


def gradients_of(loss, module, x, state=None):
    """{grad_input, grad_h0, grad_c0 (when state is given), grad_<param> for every parameter}
    of `loss`; a leaf that receives no gradient is an error."""
    leaves = {"grad_input": x}
    if state is not None:
        leaves["grad_h0"], leaves["grad_c0"] = state
    for name, p in module.named_parameters():
        leaves["grad_" + name] = p
    computed = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    for name, g in zip(leaves, computed):
        assert g is not None, f"{name} received no gradient"
    return dict(zip(leaves, computed))


def peephole_fused_and_reference(dtype, seed=0, **kwargs):
    """A fused module of `dtype` with fresh random weights and a float64 reference with the
    very same weights (upcast exactly)."""
    fused = tlstm.PeepholeLSTM(dtype=dtype, **kwargs)
    randomize_(fused, seed)
    ref = tlstm.reference.PeepholeLSTM(dtype=torch.float64, **kwargs)
    ref.load_state_dict(fused.state_dict())
    for (n1, p1), (n2, p2) in zip(fused.named_parameters(), ref.named_parameters()):
        assert n1 == n2 and torch.equal(p1.double(), p2)
    fused.train(False)
    ref.train(False)
    return fused, ref


def compare_peephole_to_reference(dtype, T, B, seed=0, lengths=None, with_hx=True,
                                  device="cpu", **kwargs):
    """Fused module in `dtype` on `device` against the float64 reference on the CPU: outputs,
    states, all gradients."""
    fused, ref = peephole_fused_and_reference(dtype, seed=seed, **kwargs)
    fused = fused.to(device)
    x, hx = make_peephole_inputs(fused, T, B, seed + 10, dtype, with_hx=with_hx)
    # the reference sees exactly the same (float32-representable when dtype is float32) data
    x64 = x.detach().to("cpu", torch.float64).requires_grad_()
    hx64 = None if hx is None else tuple(
        h.detach().to("cpu", torch.float64).requires_grad_() for h in hx)
    got = peephole_forward_backward(fused, x, hx, lengths=lengths, seed=seed + 20)
    want = peephole_forward_backward(ref, x64, hx64, lengths=lengths, seed=seed + 20)
    for key in ("output", "h_n", "c_n"):
        assert got[key].dtype == dtype, (key, got[key].dtype)
        assert got[key].device.type == torch.device(device).type, (key, got[key].device)
    assert_results_close(got, want, TOL[dtype],
                         context=f"{device} {dtype} {kwargs} lengths={lengths}")
    return got, want


def noncontiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values in a non-contiguous layout, detached: dims 0 and 1 transposed in memory
    for >= 2-D tensors (as the modules hand the ops a transposed input with batch_first), a
    stride of 2 for vectors (or where the transposed layout still counts as contiguous)."""
    t = t.detach()
    v = t.transpose(0, 1).contiguous().transpose(0, 1) if t.dim() >= 2 else t
    if v.is_contiguous():
        v = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)[..., ::2]
        v.copy_(t)
    assert not v.is_contiguous() and torch.equal(v, t)
    return v


# ---- devices -----------------------------------------------------------------------------------
#
# As torchvision's cpu_and_cuda(): a test that checks a property on every device takes the
# `device` fixture (tests/conftest.py), whose params are these. The CUDA ones carry the `cuda`
# marker (`pytest -m cuda` runs them all) and are skipped, with the reason, without a GPU. On
# CUDA each property runs with both recurrences (TLSTM_CUDA_RECURRENCE=stepwise and
# =persistent); "cuda" alone leaves the choice to the library (auto), for tests where the
# recurrence does not matter.

CUDA_OPS = ("tlstm::peephole_lstm_forward", "tlstm::tensorized_lstm_forward")
RECURRENCES = ("stepwise", "persistent")
NEEDS_CUDA = (pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available"))


def cuda_param(recurrence: str | None = None):
    """The `device` param "cuda-<recurrence>", or "cuda" (the library's own choice)."""
    assert recurrence is None or recurrence in RECURRENCES, recurrence
    return pytest.param("cuda" if recurrence is None else f"cuda-{recurrence}", marks=NEEDS_CUDA)


def cuda_recurrences():
    """CUDA with each recurrence: for properties (or sizes) checked on CUDA only."""
    return [cuda_param(r) for r in RECURRENCES]


def cpu_and_cuda():
    """The CPU and CUDA with each recurrence: the `device` fixture's params."""
    return ["cpu", *cuda_recurrences()]


def cpu_threads_and_cuda(threads=(1, 2)):
    """Params of ("device", "threads") (indirect=["device"]) for a property that the CPU
    checks once per thread count: the CPU with each count, then CUDA with each recurrence and
    threads None (the CPU's thread count does not apply there)."""
    return ([pytest.param("cpu", n, id=f"cpu-threads{n}") for n in threads]
            + [pytest.param(p.values[0], None, id=p.values[0], marks=p.marks)
               for p in cuda_recurrences()])


def on_device(device: str, *tensors):
    """Copies of `tensors` (None stays None, a tuple gives a tuple) on `device`, as new leaves
    that require grad."""
    def leaf(t):
        if t is None:
            return None
        if isinstance(t, tuple):
            return tuple(leaf(u) for u in t)
        return t.detach().to(device).requires_grad_()

    return tuple(leaf(t) for t in tensors)


def fail_without_cuda_kernels(op: str = "tlstm::peephole_lstm_forward") -> None:
    """For the CUDA variants, once they know a GPU is there: a build of tlstm without its
    CUDA kernels on a GPU machine is a failure, not a reason to skip."""
    if not torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA"):
        pytest.fail(f"a GPU is available but this build of tlstm has no CUDA kernel for {op} "
                    "(rebuild with nvcc)")


@contextlib.contextmanager
def num_threads(n: int | None):
    """torch's intra-op thread count set to n inside the block (None: left alone, as for the
    CUDA variants of a test parametrized by cpu_threads_and_cuda)."""
    if n is None:
        yield
        return
    prev = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)
