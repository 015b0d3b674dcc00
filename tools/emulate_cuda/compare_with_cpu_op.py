"""Checks what the CUDA kernels compute, without a GPU: the tLSTM's step and persistent kernels
(the 2-D cell), its step kernels on the 3-D cell (the P x P plane, which the CUDA backend runs
with the step kernels only) and the peephole LSTM's persistent kernels, of the working tree,
run on the CPU through the thread-per-CUDA-thread emulation (tensorized_driver.cpp,
persistent_peephole_driver.cpp) on inputs drawn here, and every output, saved tensor and
gradient must match the registered CPU op (torch.ops.tlstm.*), itself held to the float64
reference by the parity tests, within docs/parity.md (||out - ref|| / ||ref||: 1e-10 in
float64, 1e-5 in float32). The half types run against the op in float64 on the same inputs,
rounded to the half type (BOUND, OPMATH_BOUND).

compare_tensorized_kernels.py holds the tLSTM's two recurrences to each other; they share the
row code (which the CPU op runs too, csrc/tensorized_lstm_row.h), so a mistake in the cell's
formulas would pass there, and here it fails only where the reference it is held to (the
parity tests' float64 reference) catches it. compare_persistent_kernels.py holds the peephole
kernels to those of a GPU-tested revision. The input projection is the identity (input = x W_ih^T with W_ih = I), so what the
kernels take as the projected input is the op's input.

Usage: python tools/emulate_cuda/compare_with_cpu_op.py [--quick] [--seed N]. A development
check; tests/test_cuda_emulation.py runs the --quick set, so CI without a GPU runs it too."""
import argparse
import functools
import pathlib
import sys
import tempfile

import numpy as np
import torch

from compare_persistent_kernels import build_current_peephole_driver
from compare_tensorized_kernels import build_tensorized_driver
from emulation import ROOT, run_outputs

# docs/parity.md's bound on ||out - ref|| / ||ref||; the half types run against the op in
# float64 on the same (rounded) inputs, within what the kernels' roundings of their half outputs
# give (twice to three times what they show). A norm, not the largest difference: it sees a
# small shift of many values.
BOUND = {"double": 1e-10, "float": 1e-5, "half": 1e-3, "bfloat16": 8e-3}
# What the kernels keep in the op-math type (float) has no rounding of its own to hide a shift:
# with the block product's sums kept in the half type instead (a reduction of 64 forward, 256
# backward), the cell states move by 2.3e-4 in float16 and 1.5e-3 in bfloat16, against
# 1.3e-5 and 8.5e-5 (and 2.1e-5, 1.7e-4 for c_n) with float sums.
OPMATH_TENSORS = {"c_n", "cell_states"}
OPMATH_BOUND = {"half": 6e-5, "bfloat16": 5e-4}


def bound(dtype, name):
    """The bound on the relative error of output `name` in configurations of `dtype`."""
    return OPMATH_BOUND[dtype] if dtype in OPMATH_BOUND and name in OPMATH_TENSORS else BOUND[dtype]


# compare_tensorized_kernels.py's configuration tuples (dtype, T, B, M, depth, K, feedback,
# channel_norm, memory_conv, lengths, flush, training, columns per block forward / backward,
# staged chunk), in the CPU op's dtypes.
TENSORIZED_CONFIGS = [
    ("double", 4, 3, 8, 3, 3, 1, 1, 1, 1, 1, 1, 8, 8, 0),     # every flag, lengths (one 0)
    ("double", 3, 2, 6, 3, 7, 0, 1, 1, 1, 1, 1, 3, 5, 0),     # K=7 without feedback, odd units
    ("float", 5, 2, 5, 4, 5, 1, 1, 1, 1, 0, 1, 4, 4, 0),      # K=5 (P=7), streaming
    ("double", 3, 5, 7, 4, 3, 0, 0, 0, 0, 1, 1, 8, 4, 7),     # no feedback/CN/memory conv, chunks
    ("double", 4, 2, 9, 2, 3, 1, 0, 1, 1, 1, 0, 8, 8, 0),     # inference
    ("double", 3, 3, 6, 1, 3, 1, 1, 1, 1, 1, 1, 8, 8, 0),     # depth 1 (P=1)
    ("double", 2, 2, 5, 2, 15, 1, 0, 1, 1, 1, 1, 5, 7, 0),    # K=15 (P=8)
    ("float", 4, 3, 6, 3, 3, 1, 0, 1, 1, 1, 1, 8, 8, 0),      # LARGE_PREACTIVATIONS
]
# compare_persistent_kernels.py's (dtype, T, B, H, units per block, lengths, reverse, training,
# staged chunk)
PEEPHOLE_CONFIGS = [
    ("double", 4, 5, 37, 8, 1, 0, 1, 0),    # blocks past H, B not a multiple of the tile
    ("double", 4, 5, 37, 8, 1, 1, 1, 7),    # reverse, several chunks
    ("float", 3, 9, 64, 16, 1, 0, 1, 0),
    ("double", 5, 6, 33, 8, 1, 1, 0, 5),    # inference
    ("double", 2, 40, 64, 32, 0, 0, 1, 0),  # more tiles than threads
    ("double", 6, 4, 33, 8, 1, 1, 0, 5),    # reverse inference, even T: slots by step, not time
    # 320 work items forward (two rounds of 256) with several staged chunks; long reductions
    # in the half types (see OPMATH_BOUND)
    ("half", 3, 40, 64, 32, 1, 0, 1, 7),
    ("bfloat16", 3, 40, 64, 32, 1, 1, 1, 7),
]
# The 3-D cell (weight_hh [G, M, K', K'], the state [B, P, P, M]) on the step kernels
# (tensorized_driver.cpp's plane mode), in the same tuples; the last three (the persistent
# kernels' blocks and chunk) are unused. Each of the eight combinations of feedback, channel
# norm and memory convolution; K=5 (25 memory taps, the CUDA limit) with and without feedback;
# depth 1 to 4; M=33 (two rounds of a warp's lanes, the second partial); float32.
TENSORIZED_3D_CONFIGS = [
    ("double", 3, 4, 5, 3, 3, 1, 1, 1, 1, 1, 1, 0, 0, 0),    # every flag, lengths (one 0), N=9
    ("float", 3, 2, 6, 2, 5, 1, 0, 1, 1, 0, 1, 0, 0, 0),     # K=5 (Kq=25, P=3), streaming
    ("double", 3, 2, 6, 3, 3, 0, 1, 0, 0, 1, 1, 0, 0, 0),    # no feedback, CN alone
    ("float", 3, 2, 33, 2, 3, 1, 1, 0, 1, 1, 1, 0, 0, 0),    # M=33
    ("double", 3, 3, 6, 1, 3, 1, 0, 0, 1, 1, 1, 0, 0, 0),    # depth 1 (N=1), feedback alone
    ("double", 2, 2, 5, 1, 5, 1, 1, 1, 0, 0, 1, 0, 0, 0),    # depth 1 with K=5: c'=1 < c
    ("double", 2, 2, 4, 4, 3, 0, 0, 1, 1, 1, 1, 0, 0, 0),    # depth 4 (P=4, N=16), memory conv
    ("double", 4, 2, 7, 3, 3, 1, 0, 1, 1, 1, 0, 0, 0, 0),    # inference
    ("float", 2, 2, 5, 3, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0),     # K=5, P=5 (N=25), every flag
    ("double", 3, 2, 5, 2, 3, 0, 0, 0, 1, 0, 1, 0, 0, 0),    # no flag, streaming
    ("double", 2, 2, 6, 3, 5, 0, 1, 1, 1, 1, 1, 0, 0, 0),    # K=5 without feedback (K'=3)
    ("float", 3, 3, 6, 3, 3, 1, 0, 1, 1, 1, 1, 0, 0, 0),     # LARGE_PREACTIVATIONS
]
# every flag with lengths; K=7 without feedback, odd units (a partial last block); large
# logits and pre-activations in float32
TENSORIZED_QUICK = TENSORIZED_CONFIGS[:2] + TENSORIZED_CONFIGS[7:8]
# the 3-D cell: every flag with lengths (one 0) in float64; K=5 (25 memory taps) in float32
TENSORIZED_3D_QUICK = TENSORIZED_3D_CONFIGS[:2]
# reverse training with chunks; reverse inference with even T; the half types
PEEPHOLE_QUICK = PEEPHOLE_CONFIGS[1:2] + PEEPHOLE_CONFIGS[5:8]
# the dtype the op runs in, and the type the half types' inputs are rounded to
TORCH_DTYPE = {"double": torch.float64, "float": torch.float32, "half": torch.float64,
               "bfloat16": torch.float64}
ROUNDED = {"half": torch.float16, "bfloat16": torch.bfloat16}
# configurations drawn with large memory-kernel logits and gate pre-activations, where in
# float32 exp overflows (past 88.7 the device's expf returns inf; the emulation compiles the
# device math, cuda_host_shim.h): biases of the logits 100, -120, 140, ... and of the even
# channels' gates +-(100 + 10 gate), both signs in each gate. Large through the biases, not
# the weights, so that the results stay well conditioned (far from 0, a gate is saturated;
# the logits are far apart) and float32's bound holds.
LARGE_PREACTIVATIONS = {(False, TENSORIZED_CONFIGS[7]), (True, TENSORIZED_3D_CONFIGS[11])}


def driver_lengths(pattern, T, B):
    """A driver's lengths (pattern[b % len(pattern)]) clamped to [0, T]: the kernels clamp
    them, the CPU op requires it."""
    return torch.tensor([min(pattern[b % len(pattern)], T) for b in range(B)], dtype=torch.int64)


def active_steps(lengths, T, B):
    """[T, B, 1]: 1 where step t of sequence b runs (t < lengths[b]), else 0."""
    if lengths is None:
        return torch.ones(T, B, 1, dtype=torch.float64)
    return (torch.arange(T)[:, None] < lengths[None, :])[..., None].to(torch.float64)


def uniform_inputs(shapes, generator, dtype):
    """Uniform inputs in [-scale, scale], by name: {name: (shape, scale)}, in the driver's order,
    as float64; for the half types rounded to that type, so that the driver (which rounds its
    inputs to its type) and the op in float64 start from the same numbers."""
    inputs = {name: (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * scale
              for name, (shape, scale) in shapes.items()}
    if dtype in ROUNDED:
        inputs = {k: v.to(ROUNDED[dtype]).to(torch.float64) for k, v in inputs.items()}
    return inputs


def tensorized_case(config, generator, plane=False):
    """The inputs in the driver's order (float64, flat) and the CPU op's results, by name.
    plane: the 3-D cell (tensorized_driver.cpp's plane mode), else the 2-D cell."""
    dtype, T, B, M, L, K, feedback, norm, memory_conv, use_lengths, flush, training = config[:12]
    c = (K - 1) // 2
    P, taps = (L - 1) * c + 1, (K if feedback else c + 1)
    memory_taps = K * K if plane else K
    G = 4 * M + (memory_taps if memory_conv else 0)
    weight_taps = (taps, taps) if plane else (taps,)  # K' or K' x K'
    width = taps ** len(weight_taps) * M  # W_col's rows
    state = (B, P, P, M) if plane else (B, P, M)

    inputs = uniform_inputs({
        "proj": ((T, B, M), 1.0), "bias_ih": ((M,), 0.5), "bias_hh": ((G,), 0.5),
        "gamma": ((5, M), 1.0), "beta": ((5, M), 0.5), "w_col": ((width, G), 1.5 / width ** 0.5),
        "h0": (state, 1.0), "c0": (state, 1.0), "grad_output": ((T, B, M), 1.0),
        "grad_h_n": (state, 1.0), "grad_c_n": (state, 1.0)}, generator, dtype)
    if (plane, config) in LARGE_PREACTIVATIONS:
        bias = inputs["bias_hh"]
        for k in range(4 * M, G):
            bias[k] += (-1) ** k * (100 + 20 * (k - 4 * M))
        for gate in range(4):
            for m in range(0, M, 2):
                bias[gate * M + m] += (-1) ** (m // 2 + gate) * (100 + 10 * gate)
    t = {k: v.to(TORCH_DTYPE[dtype]) for k, v in inputs.items()}
    # tensorized_driver.cpp's lengths
    lengths = driver_lengths([T, 1, T - 1, 0, 2], T, B) if use_lengths else None
    weight_ih = torch.eye(M, dtype=t["proj"].dtype)
    # W_col[k*M + m, o] = weight_hh[o, m, k] (k = k1*K' + k2): [G, M, K'] or [G, M, K', K']
    weight_hh = t["w_col"].view(*weight_taps, M, G)
    weight_hh = weight_hh.permute(-1, -2, *range(len(weight_taps))).contiguous()
    norm_weight, norm_bias = (t["gamma"], t["beta"]) if norm else (None, None)
    shape = (L, K, bool(feedback), bool(memory_conv), bool(flush))
    # the driver's inputs, taken before the op runs (t shares the float64 inputs' storage)
    flat = torch.cat([v.reshape(-1) for v in inputs.values()]).numpy()
    output, h_n, c_n, hcat, gates, q, norm_hat, norm_rstd, cells = (
        torch.ops.tlstm.tensorized_lstm_forward(
            t["proj"], t["h0"], t["c0"], weight_ih, t["bias_ih"], weight_hh, t["bias_hh"],
            norm_weight, norm_bias, lengths, *shape, bool(training)))
    ref = {"output": output, "h_n": h_n, "c_n": c_n}
    if training:
        ref.update(hcat=hcat, gates=gates, cells=cells)
        if memory_conv:
            ref["q"] = q
        if norm:
            ref.update(norm_hat=norm_hat, norm_rstd=norm_rstd)
        (grad_input, grad_h0, grad_c0, _, grad_bias_ih, grad_weight_hh, grad_bias_hh,
         grad_norm_weight, grad_norm_bias) = torch.ops.tlstm.tensorized_lstm_backward(
            t["grad_output"], t["grad_h_n"], t["grad_c_n"], t["proj"], weight_ih, weight_hh,
            norm_weight, norm_bias, lengths, hcat, gates, q, norm_hat, norm_rstd, cells, *shape,
            True)
        ref.update(grad_input=grad_input, grad_h0=grad_h0, grad_c0=grad_c0,
                   grad_bias_ih=grad_bias_ih, grad_weight_hh=grad_weight_hh,
                   grad_bias_hh=grad_bias_hh)
        if norm:
            ref.update(grad_norm_weight=grad_norm_weight, grad_norm_bias=grad_norm_bias)
    if not np.array_equal(torch.cat([v.reshape(-1) for v in inputs.values()]).numpy(), flat):
        raise RuntimeError(f"tLSTM {config}: the CPU op wrote into its inputs")
    return flat, ref, dict(T=T, B=B, M=M, P=P, c=c, taps=taps, G=G, plane=plane,
                           S=T + (L - 1 if flush else 0),
                           training=training, norm=norm, memory_conv=memory_conv,
                           lengths=lengths, grad_h_n=inputs["grad_h_n"],
                           grad_c_n=inputs["grad_c_n"])


class reader:
    """take(*shape): the next values of a driver's output file as a float64 tensor of that
    shape; done() checks that nothing is left over."""

    def __init__(self, values):
        self.values, self.pos = values, 0

    def __call__(self, *shape):
        count = int(np.prod(shape))
        part = torch.from_numpy(self.values[self.pos:self.pos + count].copy()).view(*shape)
        self.pos += count
        return part

    def done(self):
        assert self.pos == len(self.values), (self.pos, len(self.values))


def tensorized_results(values, n):
    """The op's outputs and gradients from the driver's output file (its dump order). The
    kernels' buffers are location first ([N, B, ...], N = P or P*P, as the op's saved
    tensors); their returned state and dL/dH_0, dL/dC_0 are transposed to the op's [B, P, M]
    or [B, P, P, M]."""
    T, B, M, P, c, taps, G, S = (n[k] for k in ("T", "B", "M", "P", "c", "taps", "G", "S"))
    N = P * P if n["plane"] else P
    slots = S if n["training"] else 1
    take = reader(values)

    def state():  # [N*B, M] in the kernels' row order, as the op returns it: [B, P(, P), M]
        return take(N, B, M).transpose(0, 1).reshape(B, *((P, P) if n["plane"] else (P,)), M)

    out = {"output": take(T, B, M), "h_n": state(), "c_n": state()}
    hcat = take(S + 1 if n["training"] else 2, N + 1, B, M)  # inference: the running H, scratch
    cells = take(S + 1 if n["training"] else 2, N, B, M)
    gates = take(slots, N, B, 4 * M)
    if not n["training"]:
        return out  # the rest is inference scratch
    out.update(gates=gates, cells=cells, hcat=hcat)
    if n["memory_conv"]:
        out["q"] = take(S, N, B, G - 4 * M)
    if n["norm"]:
        out.update(norm_hat=take(S, N, B, 5, M), norm_rstd=take(S, N, B, 5))
    grad_pre = take(S, N, B, G)
    grad_x_in = take(S, B, M)  # the input rows' gradient, formed by the driver after the loop
    out.update(grad_h0=state(), grad_c0=state())
    if n["lengths"] is not None:  # as the driver adds after the loop: length 0 returns H_0, C_0
        unread = (n["lengths"] == 0).view(B, *[1] * (out["grad_h0"].dim() - 1)).double()
        out["grad_h0"] = out["grad_h0"] + n["grad_h_n"] * unread
        out["grad_c0"] = out["grad_c0"] + n["grad_c_n"] * unread
    if n["norm"]:
        sums = take(N, B, 10, M).sum((0, 1))
        out.update(grad_norm_weight=sums[:5], grad_norm_bias=sums[5:])
    take.done()
    if n["plane"]:
        out["grad_weight_hh"] = plane_weight_gradient(hcat[:S], grad_pre, P, c, taps)
    else:
        # the parameter gradients as the driver forms them after the loop
        # (tensorized_lstm.cpp): tap k (d = k - c) of hidden rows first.. read Hcat rows
        # first + d.. (the input row too)
        grad_weight_col = torch.zeros(taps, M, G, dtype=torch.float64)
        for k in range(taps):
            d = k - c
            first, last = max(1, -d), min(P, P - d)
            if last < first:
                continue
            read = hcat[:S, first + d:last + d + 1].reshape(-1, M)
            grad_weight_col[k] = read.t() @ grad_pre[:, first - 1:last].reshape(-1, G)
        out["grad_weight_hh"] = grad_weight_col.permute(2, 1, 0)
    out["grad_bias_hh"] = grad_pre.reshape(-1, G).sum(0)
    out["grad_bias_ih"] = grad_x_in.sum((0, 1))
    out["grad_input"] = grad_x_in[:T] * active_steps(n["lengths"], T, B)
    return out


def plane_weight_gradient(hcat, grad_pre, P, c, taps):
    """dL/dweight_hh [G, M, K', K'] of the 3-D cell from Hcat [S, N+1, B, M] and dL/dA
    [S, N, B, G]: the plane padded to (P+1) x (P+1), the input at (0, 0) and zeros along the
    rest of row 0 and column 0; tap (k1, k2) of location (p1, p2) reads (p1 + k1 - c,
    p2 + k2 - c), for every location where that lies in the padded plane."""
    S, _, B, M = hcat.shape
    G = grad_pre.shape[-1]
    padded = torch.zeros(S, P + 1, P + 1, B, M, dtype=hcat.dtype)
    padded[:, 0, 0] = hcat[:, 0]
    padded[:, 1:, 1:] = hcat[:, 1:].reshape(S, P, P, B, M)
    grad = grad_pre.reshape(S, P, P, B, G)
    weight = torch.zeros(taps, taps, M, G, dtype=torch.float64)
    for k1 in range(taps):
        for k2 in range(taps):
            d1, d2 = k1 - c, k2 - c
            lo1, hi1, lo2, hi2 = max(1, -d1), min(P, P - d1), max(1, -d2), min(P, P - d2)
            if hi1 < lo1 or hi2 < lo2:
                continue
            read = padded[:, lo1 + d1:hi1 + d1 + 1, lo2 + d2:hi2 + d2 + 1].reshape(-1, M)
            weight[k1, k2] = read.t() @ grad[:, lo1 - 1:hi1, lo2 - 1:hi2].reshape(-1, G)
    return weight.permute(3, 2, 0, 1)


def peephole_case(config, generator):
    """As tensorized_case, for the persistent peephole driver."""
    dtype, T, B, H, _, use_lengths, reverse, training = config[:8]
    inputs = uniform_inputs({
        "gates_in": ((T, B, 4 * H), 1.0), "bias": ((4 * H,), 0.5), "peephole": ((3, H), 0.5),
        "weight_hh": ((4 * H, H), H ** -0.5), "h0": ((B, H), 1.0), "c0": ((B, H), 1.0),
        "grad_output": ((T, B, H), 1.0), "grad_h_n": ((B, H), 1.0), "grad_c_n": ((B, H), 1.0)},
        generator, dtype)
    t = {k: v.to(TORCH_DTYPE[dtype]) for k, v in inputs.items()}
    # persistent_peephole_driver.cpp's lengths
    lengths = driver_lengths([T, 2, T - 1, 0, 1, T, 3], T, B) if use_lengths else None
    weight_ih = torch.eye(4 * H, dtype=t["gates_in"].dtype)
    output, h_n, c_n, gates, hidden_states, cell_states = torch.ops.tlstm.peephole_lstm_forward(
        t["gates_in"], t["h0"], t["c0"], weight_ih, t["weight_hh"], t["bias"],
        torch.zeros_like(t["bias"]), t["peephole"], None, lengths, bool(reverse), "tanh",
        bool(training))
    ref = {"output": output, "h_n": h_n, "c_n": c_n}
    active = active_steps(lengths, T, B)
    if training:
        # the gates of steps past a sequence's end are never read; the backends leave different
        # values there
        ref.update(gates=gates * active, hidden_states=hidden_states, cell_states=cell_states)
        (grad_input, grad_h0, grad_c0, _, grad_weight_hh, grad_bias, grad_weight_peephole,
         _) = torch.ops.tlstm.peephole_lstm_backward(
            t["grad_output"], t["grad_h_n"], t["grad_c_n"], t["gates_in"], weight_ih,
            t["weight_hh"], t["peephole"], None, lengths, gates, hidden_states, cell_states,
            bool(reverse), "tanh", True)
        ref.update(grad_input=grad_input, grad_h0=grad_h0, grad_c0=grad_c0,
                   grad_weight_hh=grad_weight_hh, grad_bias=grad_bias,
                   grad_weight_peephole=grad_weight_peephole)
    flat = torch.cat([v.reshape(-1) for v in inputs.values()]).numpy()
    return flat, ref, dict(T=T, B=B, H=H, reverse=reverse, training=training, active=active)


def peephole_results(values, n):
    """The op's outputs and gradients from the peephole driver's output file."""
    T, B, H = n["T"], n["B"], n["H"]
    S = T + 1 if n["training"] else 2
    take = reader(values)
    gates, hidden, cells, output = take(T, B, 4 * H), take(S, B, H), take(S, B, H), take(T, B, H)
    last = (0 if n["reverse"] else T) if n["training"] else T % 2
    out = {"output": output, "h_n": hidden[last], "c_n": cells[last]}
    if not n["training"]:
        return out
    out.update(gates=gates * n["active"], hidden_states=hidden, cell_states=cells)
    grad_gates, grad_h0, grad_c0 = take(T, B, 4 * H), take(B, H), take(B, H)
    out.update(grad_input=grad_gates, grad_h0=grad_h0, grad_c0=grad_c0,
               grad_weight_peephole=take(B, 3, H).sum(0), grad_bias=grad_gates.sum((0, 1)))
    take.done()
    # dW_hh = sum over steps of dA_t^T h_prev(t), as the driver forms it after the loop
    hidden_prev = hidden[1:] if n["reverse"] else hidden[:-1]
    out["grad_weight_hh"] = torch.einsum("tbg,tbh->gh", grad_gates, hidden_prev)
    return out


def compare(cases, workdir, seed, out=None):
    """cases: (name, configs, modes, make_case, results) per cell, modes as [(label, command)];
    runs each configuration in each mode, prints a line for each and returns how many failed."""
    from tlstm.parity import rel_err  # docs/parity.md's measure

    out = out or sys.stdout
    generator = torch.Generator().manual_seed(seed)
    failures = 0
    for name, configs, modes, make_case, results in cases:
        for config in configs:
            flat, ref, sizes = make_case(config, generator)
            inputs = workdir / "inputs.bin"
            flat.astype(np.float64).tofile(inputs)
            for label, command in modes:
                values = run_outputs([command], config, workdir, extra=[inputs])[0]
                got = results(values, sizes)
                # a NaN or infinite error fails, as does a wrong shape
                errors = {k: rel_err(got[k], v) if got[k].shape == v.shape else float("inf")
                          for k, v in ref.items()}
                ok = all(e <= bound(config[0], k) for k, e in errors.items())
                # the worst against its bound
                worst = max(errors, key=lambda k: (errors[k] != errors[k],
                                                   errors[k] / bound(config[0], k)))
                failures += not ok
                print(f"{'ok  ' if ok else 'FAIL'} {name} {label:10s} {config}: {len(errors)} "
                      f"tensors, worst {worst} {errors[worst]:.1e} (bound "
                      f"{bound(config[0], worst):.0e})", file=out, flush=True)
    return failures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="nine configurations")
    parser.add_argument("--seed", type=int, default=None, help="default: a fresh one")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import tlstm  # noqa: F401  (registers torch.ops.tlstm)

    seed = args.seed if args.seed is not None else int(torch.randint(2**31, ()).item())
    print(f"seed {seed}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        tensorized = build_tensorized_driver(tmp)
        peephole = build_current_peephole_driver(tmp)
        cases = [
            ("tLSTM", TENSORIZED_QUICK if args.quick else TENSORIZED_CONFIGS,
             [("stepwise", [tensorized, "stepwise"]), ("persistent", [tensorized, "persistent"])],
             tensorized_case, tensorized_results),
            ("peephole", PEEPHOLE_QUICK if args.quick else PEEPHOLE_CONFIGS,
             [("persistent", [peephole])], peephole_case, peephole_results),
            # last, so that a seed draws the other cases' inputs as it did before
            ("tLSTM 3-D", TENSORIZED_3D_QUICK if args.quick else TENSORIZED_3D_CONFIGS,
             [("plane", [tensorized, "plane"])],
             functools.partial(tensorized_case, plane=True), tensorized_results),
        ]
        failures = compare(cases, tmp, seed)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
