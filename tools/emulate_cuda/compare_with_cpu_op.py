"""Checks what the tensorized LSTM's CUDA kernels compute, without a GPU: the step kernels and
the persistent kernels of the working tree run on the CPU through the thread-per-CUDA-thread
emulation (tensorized_driver.cpp), on inputs drawn here, and every output and gradient must
match the registered CPU op (torch.ops.tlstm.tensorized_lstm_*), itself held to the float64
reference by the parity tests, within SPEC.md section 3 (||out - ref|| / ||ref||: 1e-10 in
float64, 1e-5 in float32).

compare_tensorized_kernels.py holds the two recurrences to each other; they share the row code,
so a mistake in it would pass there. Here it cannot. The input projection is the identity
(input = x W_ih^T with W_ih = I), so the kernels' input rows are the op's input.

Usage: python tools/emulate_cuda/compare_with_cpu_op.py [--quick] [--seed N]. A development
check; tests/test_cuda_emulation.py runs the --quick set, so CI without a GPU runs it too."""
import argparse
import pathlib
import sys
import tempfile

import numpy as np
import torch

from compare_tensorized_kernels import build_tensorized_driver
from emulation import ROOT, run_outputs

BOUND = {"double": 1e-10, "float": 1e-5}
# compare_tensorized_kernels.py's configuration tuples (dtype, T, B, M, depth, K, feedback,
# channel_norm, memory_conv, lengths, flush, training, columns per block forward / backward,
# staged chunk), in the dtypes the CPU op has.
CONFIGS = [
    ("double", 4, 3, 8, 3, 3, 1, 1, 1, 1, 1, 1, 8, 8, 0),     # every flag, lengths (one 0)
    ("double", 3, 2, 6, 3, 7, 0, 1, 1, 1, 1, 1, 3, 5, 0),     # K=7 without feedback, odd units
    ("float", 5, 2, 5, 4, 5, 1, 1, 1, 1, 0, 1, 4, 4, 0),      # K=5 (P=7), streaming
    ("double", 3, 5, 7, 4, 3, 0, 0, 0, 0, 1, 1, 8, 4, 7),     # no feedback/CN/memory conv, chunks
    ("double", 4, 2, 9, 2, 3, 1, 0, 1, 1, 1, 0, 8, 8, 0),     # inference
    ("double", 3, 3, 6, 1, 3, 1, 1, 1, 1, 1, 1, 8, 8, 0),     # depth 1 (P=1)
    ("double", 2, 2, 5, 2, 15, 1, 0, 1, 1, 1, 1, 5, 7, 0),    # K=15 (P=8)
]
QUICK = CONFIGS[:2]
TORCH_DTYPE = {"double": torch.float64, "float": torch.float32}


def lengths_of(T, B):
    # tensorized_driver.cpp's lengths; the kernels clamp them to [0, T], the CPU op requires it
    return torch.tensor([min(v, T) for v in [T, 1, T - 1, 0, 2] * B][:B], dtype=torch.int64)


def rel_err(out, ref):
    out, ref = torch.as_tensor(out, dtype=torch.float64), ref.to(torch.float64)
    if out.shape != ref.shape or not torch.isfinite(out).all():
        return float("inf")
    scale = ref.norm().item()
    return (out - ref).norm().item() / (scale if scale > 0 else 1.0)


def tensorized_case(config, generator):
    """The inputs in the driver's order (float64, flat) and the CPU op's results, by name."""
    dtype, T, B, M, L, K, feedback, norm, memory_conv, use_lengths, flush, training = config[:12]
    c = (K - 1) // 2
    P, taps, G = (L - 1) * c + 1, (K if feedback else c + 1), 4 * M + (K if memory_conv else 0)
    width = taps * M

    def uniform(shape, scale):
        return (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * scale

    inputs = {
        "proj": uniform((T, B, M), 1.0), "bias_ih": uniform((M,), 0.5),
        "bias_hh": uniform((G,), 0.5), "gamma": uniform((5, M), 1.0),
        "beta": uniform((5, M), 0.5), "w_col": uniform((width, G), 1.5 / width ** 0.5),
        "h0": uniform((B, P, M), 1.0), "c0": uniform((B, P, M), 1.0),
        "grad_output": uniform((T, B, M), 1.0), "grad_h_n": uniform((B, P, M), 1.0),
        "grad_c_n": uniform((B, P, M), 1.0),
    }
    t = {k: v.to(TORCH_DTYPE[dtype]) for k, v in inputs.items()}
    lengths = lengths_of(T, B) if use_lengths else None
    weight_ih = torch.eye(M, dtype=t["proj"].dtype)
    weight_hh = t["w_col"].view(taps, M, G).permute(2, 1, 0).contiguous()  # [G, M, K']
    norm_weight, norm_bias = (t["gamma"], t["beta"]) if norm else (None, None)
    shape = (L, K, bool(feedback), bool(memory_conv), bool(flush))
    output, h_n, c_n, x_col, gates, q, norm_hat, norm_rstd, cells = (
        torch.ops.tlstm.tensorized_lstm_forward(
            t["proj"], t["h0"], t["c0"], weight_ih, t["bias_ih"], weight_hh, t["bias_hh"],
            norm_weight, norm_bias, lengths, *shape, bool(training)))
    ref = {"output": output, "h_n": h_n, "c_n": c_n}
    if training:
        ref.update(x_col=x_col, gates=gates, cells=cells)
        if memory_conv:
            ref["q"] = q
        if norm:
            ref.update(norm_hat=norm_hat, norm_rstd=norm_rstd)
        (grad_input, grad_h0, grad_c0, _, grad_bias_ih, grad_weight_hh, grad_bias_hh,
         grad_norm_weight, grad_norm_bias) = torch.ops.tlstm.tensorized_lstm_backward(
            t["grad_output"], t["grad_h_n"], t["grad_c_n"], t["proj"], weight_ih, weight_hh,
            norm_weight, norm_bias, lengths, x_col, gates, q, norm_hat, norm_rstd, cells, *shape,
            True)
        ref.update(grad_input=grad_input, grad_h0=grad_h0, grad_c0=grad_c0,
                   grad_bias_ih=grad_bias_ih, grad_weight_hh=grad_weight_hh,
                   grad_bias_hh=grad_bias_hh)
        if norm:
            ref.update(grad_norm_weight=grad_norm_weight, grad_norm_bias=grad_norm_bias)
    flat = torch.cat([v.reshape(-1) for v in inputs.values()]).numpy()
    return flat, ref, dict(T=T, B=B, M=M, P=P, taps=taps, G=G, S=T + (L - 1 if flush else 0),
                           training=training, norm=norm, memory_conv=memory_conv,
                           lengths=lengths)


def tensorized_results(values, n):
    """The op's outputs and gradients from the driver's output file (its dump order)."""
    T, B, M, P, taps, G, S = (n[k] for k in ("T", "B", "M", "P", "taps", "G", "S"))
    rows, slots = B * P, S if n["training"] else 1
    pos = 0

    def take(*shape):
        nonlocal pos
        count = int(np.prod(shape))
        part = torch.from_numpy(values[pos:pos + count].copy()).view(*shape)
        pos += count
        return part

    out = {"output": take(T, B, M)}
    out["h_n"] = take(2, B, P, M)[S % 2]
    cells = take(S + 1 if n["training"] else 2, B, P, M)
    out["c_n"] = cells[S] if n["training"] else cells[S % 2]
    gates = take(slots, B, P, 4 * M)
    if not n["training"]:
        take(len(values) - pos)  # the rest is inference scratch
        return out
    out.update(gates=gates, cells=cells, x_col=take(S, B, P, taps, M))
    if n["memory_conv"]:
        out["q"] = take(S, B, P, n["G"] - 4 * M)
    if n["norm"]:
        out.update(norm_hat=take(S, B, P, 5, M), norm_rstd=take(S, B, P, 5))
    grad_pre = take(S, B, P, G)
    take(rows * taps * M)  # dX_col of the last step: scratch
    grad_input_row = take(S, B, M)
    out.update(grad_h0=take(B, P, M), grad_c0=take(B, P, M))
    if n["norm"]:
        sums = take(B, P, 10, M).sum((0, 1))
        out.update(grad_norm_weight=sums[:5], grad_norm_bias=sums[5:])
    assert pos == len(values), (pos, len(values))
    # the parameter gradients as the driver forms them after the loop (tensorized_lstm.cpp)
    out["grad_weight_hh"] = (out["x_col"].reshape(S * rows, taps * M).t()
                             @ grad_pre.reshape(S * rows, G)).view(taps, M, G).permute(2, 1, 0)
    out["grad_bias_hh"] = grad_pre.reshape(-1, G).sum(0)
    out["grad_bias_ih"] = grad_input_row.sum((0, 1))
    grad_input = grad_input_row[:T]
    if n["lengths"] is not None:
        grad_input = grad_input * (torch.arange(T)[:, None] < n["lengths"][None, :])[..., None]
    out["grad_input"] = grad_input
    return out


def compare(configs, exe, workdir, seed, out=None):
    """Runs each configuration through both recurrences; prints a line per configuration and
    recurrence and returns the number that failed."""
    out = out or sys.stdout
    generator = torch.Generator().manual_seed(seed)
    failures = 0
    for config in configs:
        flat, ref, sizes = tensorized_case(config, generator)
        inputs = workdir / "inputs.bin"
        flat.astype(np.float64).tofile(inputs)
        for mode in ("stepwise", "persistent"):
            values = run_outputs([[exe, mode]], config, workdir, extra=[inputs])[0]
            got = tensorized_results(values, sizes)
            errors = {name: rel_err(got[name], value) for name, value in ref.items()}
            worst = max(errors, key=errors.get)
            ok = errors[worst] <= BOUND[config[0]]
            failures += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {mode:10s} {config}: {len(errors)} tensors, "
                  f"worst {worst} {errors[worst]:.1e}", file=out, flush=True)
    return failures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="two configurations")
    parser.add_argument("--seed", type=int, default=None, help="default: a fresh one")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import tlstm  # noqa: F401  (registers torch.ops.tlstm)

    seed = args.seed if args.seed is not None else int(torch.randint(2**31, ()).item())
    print(f"seed {seed}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        exe = build_tensorized_driver(tmp)
        failures = compare(QUICK if args.quick else CONFIGS, exe, tmp, seed)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
