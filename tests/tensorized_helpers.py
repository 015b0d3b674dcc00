"""Shared helpers of the tensorized LSTM (tLSTM) tests (tests/test_tensorized_*.py).

Accuracy is measured as in docs/parity.md: error = ||out - ref|| / ||ref|| against the float64
reference (tlstm.reference.TensorizedLSTM), for outputs, final states and every gradient. This
file also holds `spec_tlstm`, an implementation of docs/cells.md (section 2) written
independently of the library (one sequence, one row and one tap at a time), used to check the
reference itself.
"""
from __future__ import annotations

import itertools
import math

import torch
from torch.nn.utils.rnn import PackedSequence

import tlstm
from helpers import TOL, assert_results_close, gradients_of, make_gen, pack, randn

F64 = torch.float64
F32 = torch.float32

# ---- modules ---------------------------------------------------------------------------------


def randomize_tensorized_(module: torch.nn.Module, seed: int) -> None:
    """Fresh random values for every parameter, CN parameters included (so that gamma and beta
    are not just 1 and 0): weights and biases U(-k, k) with k = 1.5/sqrt(M), gamma U(-1.3, 1.3),
    beta U(-0.7, 0.7). Drawn in float64, so every dtype gets the same (rounded) values.

    The 3-D cell's weight_hh has K' times the 2-D cell's taps (K' x K'): its k is divided by
    sqrt(K') more, so that A has the 2-D cell's variance. With the 2-D scale, A's spread made the
    random dynamics chaotic at K=5: the float32 reference itself then missed float64 by up to
    1.6e-4, so no float32 implementation could be held to 1e-5 there."""
    g = make_gen(seed)
    k = 1.5 / math.sqrt(module.hidden_size)
    scales = {"norm_weight": 1.3, "norm_bias": 0.7}
    if getattr(module, "tensor_dim", 2) == 3:
        scales["weight_hh"] = k / math.sqrt(module.weight_hh.shape[-1])
    with torch.no_grad():
        for name, p in module.named_parameters():
            s = scales.get(name, k)
            p.copy_((torch.rand(p.shape, generator=g, dtype=F64) * 2 - 1) * s)


def make_tlstm(cls, dtype=F64, seed=0, device=None, **kwargs):
    module = cls(dtype=dtype, device=device, **kwargs)
    randomize_tensorized_(module, seed)
    return module


def fused_and_reference(dtype=F64, seed=0, **kwargs):
    """A fused tlstm.TensorizedLSTM in `dtype` with fresh random weights and a float64
    reference with the very same weights."""
    fused = make_tlstm(tlstm.TensorizedLSTM, dtype, seed, **kwargs)
    ref = tlstm.reference.TensorizedLSTM(dtype=F64, **kwargs)
    ref.load_state_dict(fused.state_dict())
    for (n1, p1), (n2, p2) in zip(fused.named_parameters(), ref.named_parameters()):
        assert n1 == n2 and torch.equal(p1.double(), p2), n1
    return fused, ref


def state_shape(module, B):
    return (B, *module.state_shape)


def make_inputs(module, T, B, seed, dtype=None, with_state=True, batch_first=None, device=None):
    """Leaf tensors x ([T, B, I], or [B, T, I] with batch_first) and (H_0, C_0) [B, P, M], all
    requiring grad, drawn in float64 from `seed` (on the CPU) and cast to `dtype` and `device`
    (the module's by default)."""
    dtype = dtype or module.weight_ih.dtype
    device = device or module.weight_ih.device
    batch_first = module.batch_first if batch_first is None else batch_first
    shape = (B, T, module.input_size) if batch_first else (T, B, module.input_size)

    def leaf(shape, seed, scale=1.0):
        return randn(shape, seed, dtype, scale).to(device).requires_grad_()

    x = leaf(shape, seed)
    state = None
    if with_state:
        state = (leaf(state_shape(module, B), seed + 1, 0.5),
                 leaf(state_shape(module, B), seed + 2, 0.5))
    return x, state


def as_f64_leaves(x, state, device="cpu"):
    """float64 copies (on `device`, the CPU by default) of x and the state, as new leaves."""
    def leaf(t):
        return t.detach().to(device, F64).requires_grad_()

    return leaf(x), (None if state is None else tuple(leaf(s) for s in state))


def upstream(shape, seed, dtype, device="cpu"):
    """A random upstream gradient, identical for every dtype (rounded through float32)."""
    return randn(shape, seed, F32).to(device, dtype)


def forward_backward(module, x, state=None, lengths=None, flush=True, seed=1234, grads=True):
    """Runs `module` (packing x with `lengths` when given) and back-propagates random upstream
    gradients through the output and both final states.

    Returns a dict: output, h_n, c_n and grad_input, grad_h0, grad_c0 and grad_<param> for every
    parameter (a missing gradient is an error)."""
    inp = pack(x, lengths, module.batch_first) if lengths is not None else x
    out, (h_n, c_n) = module(inp, state, flush=flush)
    out_t = out.data if isinstance(out, PackedSequence) else out
    if not grads:
        return {"output": out_t.detach(), "h_n": h_n.detach(), "c_n": c_n.detach()}
    return results_and_gradients(module, x, state, out_t, h_n, c_n, seed)


def results_and_gradients(module, x, state, out, h_n, c_n, seed=1234):
    """What forward_backward returns, for results computed by the caller (chunk by chunk, or
    by another implementation): output, h_n, c_n and the gradients (gradients_of) of random
    upstream gradients drawn from `seed` through all three."""
    dtype, device = out.dtype, out.device
    loss = ((out * upstream(out.shape, seed, dtype, device)).sum()
            + (h_n * upstream(h_n.shape, seed + 1, dtype, device)).sum()
            + (c_n * upstream(c_n.shape, seed + 2, dtype, device)).sum())
    res = {"output": out, "h_n": h_n, "c_n": c_n}
    res.update(gradients_of(loss, module, x, state))
    return {k: v.detach() for k, v in res.items()}


def compare_fused_to_reference(dtype, T, B, seed=0, lengths=None, flush=True, with_state=True,
                               device="cpu", **kwargs):
    """The fused module in `dtype` on `device` against the float64 reference on the CPU:
    outputs, final states and every gradient, within the contract's tolerance."""
    fused, ref = fused_and_reference(dtype, seed=seed, **kwargs)
    fused = fused.to(device)
    x, state = make_inputs(fused, T, B, seed + 10, dtype, with_state=with_state)
    x64, state64 = as_f64_leaves(x, state)
    got = forward_backward(fused, x, state, lengths=lengths, flush=flush, seed=seed + 20)
    want = forward_backward(ref, x64, state64, lengths=lengths, flush=flush, seed=seed + 20)
    for key in ("output", "h_n", "c_n"):
        assert got[key].dtype == dtype, (key, got[key].dtype)
        assert got[key].device.type == torch.device(device).type, (key, got[key].device)
    assert_results_close(got, want, TOL[dtype], context=(
        f"{device} {dtype} {kwargs} T={T} B={B} lengths={lengths} flush={flush}"))
    return got, want


def param_dict(module):
    return {name: p for name, p in module.named_parameters()}


def op_args(module, x, h0, c0, lengths=None, flush=True, params=None):
    """The positional arguments of tlstm.ops.tensorized_lstm_sequence for `module`'s
    configuration (time-major x)."""
    p = param_dict(module) if params is None else params
    return (x, h0, c0, p["weight_ih"], p.get("bias_ih"), p["weight_hh"], p.get("bias_hh"),
            p.get("norm_weight"), p.get("norm_bias"), lengths, module.depth, module.kernel_size,
            module.feedback, module.memory_conv, flush)


def backward_op_args(forward_args, forward_outputs, upstream_grads, need_grad_input=True,
                     **replace):
    """The positional arguments of tlstm.tensorized_lstm_backward after the forward op ran on
    `forward_args` (op_args) with training=True and returned `forward_outputs`, for the
    upstream gradients (grad_output, grad_h_n, grad_c_n); `replace` swaps arguments by name
    (a callable gets the original)."""
    x, _, _, w_ih, _, w_hh, _, nw, nb, lens, depth, K, feedback, memory_conv, flush = forward_args
    saved = forward_outputs[3:]
    named = dict(zip(("grad_output", "grad_h_n", "grad_c_n"), upstream_grads),
                 input=x, weight_ih=w_ih, weight_hh=w_hh, norm_weight=nw, norm_bias=nb,
                 lengths=lens,
                 **dict(zip(("hcat", "gates", "q", "norm_hat", "norm_rstd", "cells"), saved)))
    named.update({k: v(named[k]) if callable(v) else v for k, v in replace.items()})
    return (*named.values(), depth, K, feedback, memory_conv, flush, need_grad_input)


def expected_param_count(I, M, K, channel_norm=True, memory_conv=True, feedback=True, bias=True,
                         proj_size=0):
    """docs/cells.md: I*M + M + K*M*(4M+K) + (4M+K) (+ 10M for CN), adjusted for the flags."""
    G = 4 * M + (K if memory_conv else 0)
    taps = K if feedback else (K - 1) // 2 + 1
    n = I * M + taps * M * G
    if bias:
        n += M + G
    if channel_norm:
        n += 10 * M
    return n + proj_size * M


# ---- an independent implementation of docs/cells.md, section 2 -------------------------------


def spec_tlstm(module, x, h0, c0, lengths=None, flush=True):
    """docs/cells.md section 2, one sequence, one step, one row and one tap at a time.

    x [T, B, I] (time-major), h0, c0 [B, P, M], lengths a list or None. Returns the top-row
    outputs [T, B, M or proj_size] (zero past each length), H_n, C_n [B, P, M] (after step
    T_b, whether or not the sequence is flushed). Differentiable.
    Rows are numbered as in docs/cells.md: row 0 is the input row, rows 1..P the hidden rows."""
    p = param_dict(module)
    w_ih, b_ih = p["weight_ih"], p.get("bias_ih")
    w_hh, b_hh = p["weight_hh"], p.get("bias_hh")
    gamma, beta = p.get("norm_weight"), p.get("norm_bias")
    w_proj = p.get("weight_proj")
    T, B, I = x.shape
    M, K, L = module.hidden_size, module.kernel_size, module.depth
    c = (K - 1) // 2
    P = (L - 1) * c + 1
    assert module.rows == P
    taps = K if module.feedback else c + 1
    assert w_hh.shape[2] == taps
    delay = L - 1 if flush else 0

    def cn(z, use):
        if gamma is None:
            return z
        mean = z.sum() / M
        var = ((z - mean) * (z - mean)).sum() / M
        return (z - mean) / torch.sqrt(var + 1e-5) * gamma[use] + beta[use]

    out_rows = [[None] * B for _ in range(T)]
    h_n, c_n = [], []
    for b in range(B):
        Tb = T if lengths is None else int(lengths[b])
        H = {r: h0[b, r - 1] for r in range(1, P + 1)}
        C = {r: c0[b, r - 1] for r in range(1, P + 1)}
        tops = []
        H_n, C_n = H, C  # the returned state: after step Tb, the last that reads an input
        for s in range(Tb + delay):
            x_s = x[s, b] if s < Tb else torch.zeros_like(x[0, b])  # zero input past the end
            x_tilde = w_ih @ x_s
            if b_ih is not None:
                x_tilde = x_tilde + b_ih
            hcat = {0: x_tilde, **H}
            H_new, C_new = {}, {}
            for r in range(1, P + 1):
                A = b_hh.clone() if b_hh is not None else x.new_zeros(w_hh.shape[0])
                for k in range(taps):
                    src = r - c + k
                    if 0 <= src <= P:  # rows outside 0..P are zero
                        A = A + w_hh[:, :, k] @ hcat[src]
                i_g = torch.sigmoid(cn(A[0:M], 0))
                f_g = torch.sigmoid(cn(A[M:2 * M], 1))
                g_g = torch.tanh(cn(A[2 * M:3 * M], 2))
                o_g = torch.sigmoid(cn(A[3 * M:4 * M], 3))
                if module.memory_conv:
                    logits = A[4 * M:]
                    e = torch.exp(logits - logits.max())
                    q = e / e.sum()
                    c_conv = sum(q[k] * C[min(max(r - c + k, 1), P)] for k in range(K))
                else:
                    c_conv = C[r]
                C_new[r] = g_g * i_g + c_conv * f_g
                H_new[r] = torch.tanh(cn(C_new[r], 4)) * o_g
            H, C = H_new, C_new
            if s + 1 == Tb:
                H_n, C_n = H, C
            tops.append(H[P])
        for t in range(T):
            y = tops[t + delay] if t < Tb else x.new_zeros(M)
            if w_proj is not None:
                y = w_proj @ y
            out_rows[t][b] = y
        h_n.append(torch.stack([H_n[r] for r in range(1, P + 1)]))
        c_n.append(torch.stack([C_n[r] for r in range(1, P + 1)]))
    out = torch.stack([torch.stack(row) for row in out_rows])
    return out, torch.stack(h_n), torch.stack(c_n)


# ---- covering configurations -------------------------------------------------------------------


def flag_combinations():
    """Every on/off combination of (channel_norm, memory_conv, feedback, bias)."""
    names = ("channel_norm", "memory_conv", "feedback", "bias")
    return [dict(zip(names, v)) for v in itertools.product((True, False), repeat=4)]


def config_id(kwargs):
    short = {"channel_norm": "cn", "memory_conv": "mc", "feedback": "fb", "bias": "b",
             "batch_first": "bf"}
    parts = []
    for k, v in kwargs.items():
        if isinstance(v, bool):
            parts.append(("" if v else "no") + short.get(k, k))
        else:
            parts.append(f"{short.get(k, k)}{v}")
    return "-".join(parts) or "default"


__all__ = [
    "F32", "F64", "TOL", "as_f64_leaves", "compare_fused_to_reference", "config_id",
    "expected_param_count", "flag_combinations", "forward_backward", "fused_and_reference",
    "make_inputs", "make_tlstm", "op_args", "param_dict", "randomize_tensorized_",
    "results_and_gradients",
    "spec_tlstm", "state_shape", "upstream",
]
