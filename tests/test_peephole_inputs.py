"""Input layouts: hx=None, batch of one, unbatched 2-D input, empty batch (on each device),
non-contiguous inputs, states and weights."""
import pytest
import torch
from torch import nn
from torch.func import functional_call

import tlstm
from helpers import (
    TOL,
    assert_results_close,
    compare_peephole_to_reference,
    peephole_forward_backward,
    peephole_fused_and_reference,
    make_peephole_inputs,
    noncontiguous,
    randn,
    rel_err,
)

F64 = torch.float64
CONFIGS = [
    dict(input_size=3, hidden_size=5),
    dict(input_size=3, hidden_size=6, num_layers=2, bidirectional=True, proj_size=2),
    dict(input_size=3, hidden_size=5, batch_first=True, activation="identity"),
]


def _grads(module, x, hx=None, seed=0):
    """Forward, random upstream gradient; returns output, states and grads of x, hx, params."""
    out, (h, c) = module(x, hx)
    loss = ((out * randn(out.shape, seed, out.dtype)).sum()
            + (h * randn(h.shape, seed + 1, out.dtype)).sum()
            + (c * randn(c.shape, seed + 2, out.dtype)).sum())
    leaves = [x] + ([] if hx is None else list(hx)) + list(module.parameters())
    grads = torch.autograd.grad(loss, leaves)
    return [out.detach(), h.detach(), c.detach(), *grads]


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cfg", range(len(CONFIGS)))
def test_hx_none_equals_zeros(cfg, dtype):
    kwargs = CONFIGS[cfg]
    fused, _ = peephole_fused_and_reference(dtype, seed=cfg, **kwargs)
    x, hx = make_peephole_inputs(fused, 5, 3, 1, dtype)
    zeros = tuple(torch.zeros_like(h).requires_grad_() for h in hx)
    a = peephole_forward_backward(fused, x, None, seed=2)
    b = peephole_forward_backward(fused, x, zeros, seed=2)
    b = {k: v for k, v in b.items() if k not in ("grad_h0", "grad_c0")}
    assert_results_close(a, b, TOL[dtype])
    # the zero state matters: a random one gives something else
    c = peephole_forward_backward(fused, x, hx, seed=2)
    assert rel_err(c["output"], a["output"]) > 1e-3


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cfg", range(len(CONFIGS)))
def test_batch_of_one(cfg, dtype):
    compare_peephole_to_reference(dtype, 6, 1, seed=cfg, **CONFIGS[cfg])
    compare_peephole_to_reference(dtype, 4, 1, seed=cfg, lengths=[3], **CONFIGS[cfg])


@pytest.mark.parametrize("with_hx", [False, True])
@pytest.mark.parametrize("cfg", range(len(CONFIGS)))
def test_unbatched_equals_batched_squeezed(cfg, with_hx):
    kwargs = CONFIGS[cfg]
    fused, ref = peephole_fused_and_reference(F64, seed=10 + cfg, **kwargs)
    T = 5
    x2 = randn((T, kwargs["input_size"]), 3, F64).requires_grad_()
    batch_dim = 0 if fused.batch_first else 1
    x3 = x2.detach().unsqueeze(batch_dim).requires_grad_()
    hx2 = hx3 = None
    if with_hx:
        _, hx = make_peephole_inputs(fused, T, 1, 4, F64)
        hx2 = tuple(h.detach().squeeze(1).requires_grad_() for h in hx)
        hx3 = tuple(h.detach().requires_grad_() for h in hx)
    out2, (h2, c2) = fused(x2, hx2)
    out3, (h3, c3) = fused(x3, hx3)
    assert out2.shape == out3.squeeze(batch_dim).shape and out2.dim() == 2
    assert h2.shape == h3.squeeze(1).shape and h2.dim() == 2
    assert c2.shape == c3.squeeze(1).shape and c2.dim() == 2
    for a, b in ((out2, out3.squeeze(batch_dim)), (h2, h3.squeeze(1)), (c2, c3.squeeze(1))):
        assert rel_err(a, b) <= TOL[F64]
    # same shapes as nn.LSTM for unbatched input
    lstm_kwargs = {k: v for k, v in kwargs.items() if k != "activation"}
    lo, (lh, lc) = nn.LSTM(dtype=F64, **lstm_kwargs)(x2.detach(), None if hx2 is None else
                                                     tuple(h.detach() for h in hx2))
    assert (lo.shape, lh.shape, lc.shape) == (out2.shape, h2.shape, c2.shape)
    # gradients flow back to the 2-D tensors
    g2 = _grads(fused, x2, hx2, seed=5)
    g3 = _grads(fused, x3, hx3, seed=5)
    assert g2[3].shape == x2.shape
    assert rel_err(g2[3], g3[3].squeeze(batch_dim)) <= TOL[F64]
    # and the unbatched fused result matches the unbatched reference
    r2 = _grads(ref, x2, hx2, seed=5)
    for a, b in zip(g2[:3], r2[:3]):
        assert rel_err(a, b) <= TOL[F64]


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("with_hx", [False, True])
@pytest.mark.parametrize("kwargs", [
    dict(input_size=3, hidden_size=5),
    dict(input_size=3, hidden_size=6, num_layers=2, bidirectional=True, proj_size=2,
         batch_first=True),
])
def test_empty_batch_like_nn_lstm(kwargs, with_hx, dtype, device):
    """A batch of 0 sequences on `device` gives what nn.LSTM gives (run on the CPU: the shapes
    and dtypes do not depend on the device), and zero (or no) parameter gradients."""
    lstm = nn.LSTM(dtype=dtype, **kwargs)
    module = tlstm.PeepholeLSTM(dtype=dtype, device=device, **kwargs)
    shape = (0, 4, 3) if kwargs.get("batch_first") else (4, 0, 3)
    results = []
    for m, dev in ((lstm, "cpu"), (module, device)):
        x = torch.zeros(shape, dtype=dtype, device=dev, requires_grad=True)
        hx = None
        if with_hx:
            d = 2 if m.bidirectional else 1
            real = m.proj_size or m.hidden_size
            hx = (torch.zeros(m.num_layers * d, 0, real, dtype=dtype, device=dev,
                              requires_grad=True),
                  torch.zeros(m.num_layers * d, 0, m.hidden_size, dtype=dtype, device=dev,
                              requires_grad=True))
        out, (h, c) = m(x, hx)
        assert out.device == h.device == c.device == x.device
        (out.sum() + h.sum() + c.sum()).backward()
        results.append((out.shape, h.shape, c.shape, out.dtype, x.grad.shape))
        for p in m.parameters():
            assert p.grad is None or torch.equal(p.grad, torch.zeros_like(p))
    assert results[0] == results[1]


# ---- non-contiguous tensors -------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("size", ["small", "threaded"])
def test_noncontiguous_input_and_states(size, dtype):
    kwargs = dict(input_size=4, hidden_size=72 if size == "threaded" else 5,
                  bidirectional=True, proj_size=24 if size == "threaded" else 3)
    B = 40 if size == "threaded" else 3
    fused, _ = peephole_fused_and_reference(dtype, seed=6, **kwargs)
    x, hx = make_peephole_inputs(fused, 5, B, 7, dtype)
    want = peephole_forward_backward(fused, x, hx, seed=8)
    # input: a [B, T, 2I] buffer, transposed and sliced to [T, B, I] with stride 2
    big = torch.zeros(B, 5, 2 * kwargs["input_size"], dtype=dtype)
    big[:, :, ::2] = x.detach().transpose(0, 1)
    x_nc = big.transpose(0, 1)[:, :, ::2].requires_grad_()
    assert not x_nc.is_contiguous() and torch.equal(x_nc, x)
    hx_nc = tuple(noncontiguous(h).requires_grad_() for h in hx)
    got = peephole_forward_backward(fused, x_nc, hx_nc, seed=8)
    assert_results_close(got, want, TOL[dtype])


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
def test_noncontiguous_weights_set_(dtype):
    kwargs = dict(input_size=4, hidden_size=72, proj_size=20, num_layers=2)
    fused, ref = peephole_fused_and_reference(dtype, seed=9, **kwargs)
    x, hx = make_peephole_inputs(fused, 4, 40, 10, dtype)
    want = peephole_forward_backward(fused, x, hx, seed=11)
    with torch.no_grad():
        for _, p in fused.named_parameters():
            v = noncontiguous(p)
            p.set_(v.untyped_storage(), v.storage_offset(), v.shape, v.stride())
    assert all(not p.is_contiguous() for p in fused.parameters())
    got = peephole_forward_backward(fused, x, hx, seed=11)
    assert_results_close(got, want, TOL[dtype])
    x64 = x.detach().double().requires_grad_()
    hx64 = tuple(h.detach().double().requires_grad_() for h in hx)
    assert_results_close(got, peephole_forward_backward(ref, x64, hx64, seed=11), TOL[dtype])


def test_noncontiguous_weights_functional_call():
    kwargs = dict(input_size=3, hidden_size=6, bidirectional=True, proj_size=2, num_layers=2)
    fused, ref = peephole_fused_and_reference(F64, seed=12, **kwargs)
    x, hx = make_peephole_inputs(fused, 5, 3, 13, F64)
    params = {n: noncontiguous(p).requires_grad_() for n, p in fused.named_parameters()}
    out, (h, c) = functional_call(fused, params, (x, hx))
    g = [randn(t.shape, 14 + k, F64) for k, t in enumerate((out, h, c))]
    loss = (out * g[0]).sum() + (h * g[1]).sum() + (c * g[2]).sum()
    got = torch.autograd.grad(loss, [x, *hx, *params.values()])
    out_r, (h_r, c_r) = ref(x, hx)
    loss_r = (out_r * g[0]).sum() + (h_r * g[1]).sum() + (c_r * g[2]).sum()
    want = torch.autograd.grad(loss_r, [x, *hx, *ref.parameters()])
    for a, b in zip((out, h, c, *got), (out_r, h_r, c_r, *want)):
        assert rel_err(a, b) <= TOL[F64]


def test_expanded_initial_state():
    """hx given as a stride-0 broadcast view (one state for the whole batch)."""
    fused, ref = peephole_fused_and_reference(F64, seed=14, input_size=3, hidden_size=5,
                                     bidirectional=True)
    x, _ = make_peephole_inputs(fused, 4, 3, 15, F64)
    h = randn((1, 1, 5), 16, F64).requires_grad_()
    c = randn((1, 1, 5), 17, F64).requires_grad_()
    hx = (h.expand(2, 3, 5), c.expand(2, 3, 5))
    got = peephole_forward_backward(fused, x, hx, seed=18)
    want = peephole_forward_backward(ref, x, hx, seed=18)
    assert_results_close(got, want, TOL[F64])
    g = [torch.autograd.grad(m(x, hx)[1][0].sum(), [h, c]) for m in (fused, ref)]
    for a, b in zip(*g):
        assert rel_err(a, b) <= TOL[F64]


def test_frozen_parameters():
    """Only the input requires grad (frozen weights): its gradient is still right."""
    fused, ref = peephole_fused_and_reference(F64, seed=19, input_size=3, hidden_size=5,
                                              proj_size=2, num_layers=2)
    for m in (fused, ref):
        m.requires_grad_(False)
    x, _ = make_peephole_inputs(fused, 5, 3, 20, F64)
    grads = []
    for m in (fused, ref):
        out, (h, c) = m(x)
        grads.append(torch.autograd.grad((out * randn(out.shape, 21, F64)).sum(), x)[0])
    assert rel_err(grads[0], grads[1]) <= TOL[F64]


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_inference_without_autograd(mode):
    fused, ref = peephole_fused_and_reference(F64, seed=22, input_size=3, hidden_size=72,
                                     bidirectional=True)
    x, hx = make_peephole_inputs(fused, 4, 40, 23, F64)
    x, hx = x.detach(), tuple(h.detach() for h in hx)
    ctx = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with ctx:
        out, (h, c) = fused(x, hx)
    assert not out.requires_grad
    with torch.no_grad():
        out_r, (h_r, c_r) = ref(x, hx)
    for a, b in ((out, out_r), (h, h_r), (c, c_r)):
        assert rel_err(a, b) <= TOL[F64]
