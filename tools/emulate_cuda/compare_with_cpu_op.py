"""Checks what the CUDA kernels compute, without a GPU: the tLSTM's step and persistent kernels
and the peephole LSTM's persistent kernels, of the working tree, run on the CPU through the
thread-per-CUDA-thread emulation (tensorized_driver.cpp, persistent_peephole_driver.cpp) on
inputs drawn here, and every output, saved tensor and gradient must match the registered CPU op
(torch.ops.tlstm.*), itself held to the float64 reference by the parity tests, within
docs/parity.md (||out - ref|| / ||ref||: 1e-10 in float64, 1e-5 in float32). The half types run
against the op in float64 on the same inputs, rounded to the half type (BOUND, OPMATH_BOUND).

compare_tensorized_kernels.py holds the tLSTM's two recurrences to each other; they share the
row code (which the CPU op runs too, csrc/tensorized_lstm_row.h), so a mistake in the cell's
formulas would pass there, and here it fails only where the reference it is held to (the
parity tests' float64 reference) catches it. compare_persistent_kernels.py holds the peephole
kernels to those of a GPU-tested revision. The input projection is the identity (input = x W_ih^T with W_ih = I), so what the
kernels take as the projected input is the op's input.

Usage: python tools/emulate_cuda/compare_with_cpu_op.py [--quick] [--seed N]. A development
check; tests/test_cuda_emulation.py runs the --quick set, so CI without a GPU runs it too."""
import argparse
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
# every flag with lengths; K=7 without feedback, odd units (a partial last block); large
# logits and pre-activations in float32
TENSORIZED_QUICK = TENSORIZED_CONFIGS[:2] + TENSORIZED_CONFIGS[7:8]
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
LARGE_PREACTIVATIONS = {TENSORIZED_CONFIGS[7]}


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


def tensorized_case(config, generator):
    """The inputs in the driver's order (float64, flat) and the CPU op's results, by name."""
    dtype, T, B, M, L, K, feedback, norm, memory_conv, use_lengths, flush, training = config[:12]
    c = (K - 1) // 2
    P, taps, G = (L - 1) * c + 1, (K if feedback else c + 1), 4 * M + (K if memory_conv else 0)
    width = taps * M

    inputs = uniform_inputs({
        "proj": ((T, B, M), 1.0), "bias_ih": ((M,), 0.5), "bias_hh": ((G,), 0.5),
        "gamma": ((5, M), 1.0), "beta": ((5, M), 0.5), "w_col": ((width, G), 1.5 / width ** 0.5),
        "h0": ((B, P, M), 1.0), "c0": ((B, P, M), 1.0), "grad_output": ((T, B, M), 1.0),
        "grad_h_n": ((B, P, M), 1.0), "grad_c_n": ((B, P, M), 1.0)}, generator, dtype)
    if config in LARGE_PREACTIVATIONS:
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
    weight_hh = t["w_col"].view(taps, M, G).permute(2, 1, 0).contiguous()  # [G, M, K']
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
    return flat, ref, dict(T=T, B=B, M=M, P=P, c=c, taps=taps, G=G,
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
    kernels' buffers are hidden row first ([P, B, ...], as the op's saved tensors); their
    returned state and dL/dH_0, dL/dC_0 are transposed to the op's [B, P, M]."""
    T, B, M, P, c, taps, G, S = (n[k] for k in ("T", "B", "M", "P", "c", "taps", "G", "S"))
    slots = S if n["training"] else 1
    take = reader(values)

    def state():  # [P*B, M] in the kernels' row order, as the op returns it: [B, P, M]
        return take(P, B, M).transpose(0, 1)

    out = {"output": take(T, B, M), "h_n": state(), "c_n": state()}
    hcat = take(S + 1 if n["training"] else 2, P + 1, B, M)  # inference: the running H, scratch
    cells = take(S + 1 if n["training"] else 2, P, B, M)
    gates = take(slots, P, B, 4 * M)
    if not n["training"]:
        return out  # the rest is inference scratch
    out.update(gates=gates, cells=cells, hcat=hcat)
    if n["memory_conv"]:
        out["q"] = take(S, P, B, G - 4 * M)
    if n["norm"]:
        out.update(norm_hat=take(S, P, B, 5, M), norm_rstd=take(S, P, B, 5))
    grad_pre = take(S, P, B, G)
    grad_x_in = take(S, B, M)  # the input rows' gradient, formed by the driver after the loop
    out.update(grad_h0=state(), grad_c0=state())
    if n["lengths"] is not None:  # as the driver adds after the loop: length 0 returns H_0, C_0
        unread = (n["lengths"] == 0).view(B, 1, 1).to(torch.float64)
        out["grad_h0"] = out["grad_h0"] + n["grad_h_n"] * unread
        out["grad_c0"] = out["grad_c0"] + n["grad_c_n"] * unread
    if n["norm"]:
        sums = take(P, B, 10, M).sum((0, 1))
        out.update(grad_norm_weight=sums[:5], grad_norm_bias=sums[5:])
    take.done()
    # the parameter gradients as the driver forms them after the loop (tensorized_lstm.cpp):
    # tap k (d = k - c) of hidden rows first.. read Hcat rows first + d.. (the input row too)
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
    parser.add_argument("--quick", action="store_true", help="seven configurations")
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
        ]
        failures = compare(cases, tmp, seed)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
