"""What docs/cells.md section 2 promises beyond matching the reference: the delay (y_t sees x_t and
never x_{t+1}), streaming (chunks with flush=False equal the whole sequence; flush=True is
flush=False on zero-padded input, shifted), depth 1 equals nn.LSTM, packed sequences equal
each sequence run alone, unbatched / batch_first / state=None conventions, the parameter count
and the initialisation. Each property is checked on the fused and on the reference module."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_packed_sequence

import tlstm
from helpers import TOL, assert_results_close, num_threads, pack, randn, rel_err
from tensorized_helpers import (
    F32,
    F64,
    expected_param_count,
    flag_combinations,
    forward_backward,
    make_inputs,
    make_tlstm,
    results_and_gradients,
    upstream,
)

MODULES = {"fused": tlstm.TensorizedLSTM, "reference": tlstm.reference.TensorizedLSTM}


@pytest.fixture(params=list(MODULES))
def cls(request):
    return MODULES[request.param]


# ---- the delay --------------------------------------------------------------------------------


def jacobian_norms(module, x, flush):
    """J[t, s, b, b2] = || d y_t[b] / d x_s[b2] || (via autograd with a random direction per
    output step; the direction is dense, so a zero norm means no dependence)."""
    x = x.detach().requires_grad_()
    out, _ = module(x, flush=flush)
    T, B = x.shape[:2]
    J = torch.zeros(T, T, B, B, dtype=F64)
    for t in range(T):
        for b in range(B):
            v = upstream(out[t, b].shape, 100 * t + b, out.dtype)
            (g,) = torch.autograd.grad((out[t, b] * v).sum(), x, retain_graph=True)
            J[t, :, b, :] = g.norm(dim=2).to(F64)
    return J


DELAY_CONFIGS = [
    dict(depth=1), dict(depth=2), dict(depth=3), dict(depth=4),
    dict(depth=2, kernel_size=5), dict(depth=3, kernel_size=5),
    dict(depth=3, feedback=False), dict(depth=4, feedback=False, kernel_size=5),
    dict(depth=3, memory_conv=False, channel_norm=False),
    dict(depth=3, proj_size=2),
]


@pytest.mark.parametrize("config", DELAY_CONFIGS, ids=lambda c: "-".join(f"{k}{v}" for k, v
                                                                         in c.items()))
def test_output_sees_its_input_and_never_a_later_one(cls, config):
    """flush=True: y_t depends on x_t (nonzero Jacobian block) and on no x_s with s > t
    (exactly zero); and on no other batch element's input."""
    T, B = 6, 2
    module = make_tlstm(cls, F64, seed=3, input_size=3, hidden_size=4, **config)
    x = randn((T, B, 3), 4)
    J = jacobian_norms(module, x, flush=True)
    for t in range(T):
        for b in range(B):
            assert J[t, t, b, b] > 1e-6, f"y_{t} does not depend on x_{t} ({config})"
            later = J[t, t + 1:, b, :]
            assert torch.all(later == 0), f"y_{t} depends on a later input: {later} ({config})"
            assert torch.all(J[t, :, b, 1 - b] == 0), "batch elements mix"
            # and it does depend on earlier inputs (the recurrence carries them)
            if t > 0:
                assert J[t, t - 1, b, b] > 0


@pytest.mark.parametrize("config", DELAY_CONFIGS[:8], ids=lambda c: "-".join(
    f"{k}{v}" for k, v in c.items()))
def test_raw_top_row_lags_by_depth_minus_one(cls, config):
    """flush=False: output t is the raw top row h_{t,P}; it depends on x_{t-L+1} and on no later
    input (the first L-1 outputs see no input at all)."""
    T, B = 6, 1
    module = make_tlstm(cls, F64, seed=5, input_size=3, hidden_size=4, **config)
    L = module.depth
    J = jacobian_norms(module, randn((T, B, 3), 6), flush=False)
    for t in range(T):
        first = t - (L - 1)
        assert torch.all(J[t, max(first + 1, 0):, 0, 0] == 0), f"output {t} sees too far"
        if first >= 0:
            assert J[t, first, 0, 0] > 1e-6, f"output {t} does not see x_{first}"
        else:
            assert torch.all(J[t, :, 0, 0] == 0)


@pytest.mark.parametrize("depth", [2, 4])
def test_perturbing_later_inputs_leaves_earlier_outputs_unchanged(cls, depth):
    """Forward-only form of the delay: changing x_{t+1..T} leaves y_1..y_t as they were, and
    changing x_t changes y_t."""
    T = 6
    module = make_tlstm(cls, F64, seed=7, input_size=3, hidden_size=5, depth=depth)
    x = randn((T, 2, 3), 8)
    with torch.no_grad():
        base, _ = module(x)
        for t in range(T):
            x2 = x.clone()
            x2[t + 1:] += randn(x2[t + 1:].shape, 9 + t)
            out2, _ = module(x2)
            assert rel_err(out2[:t + 1], base[:t + 1]) <= 1e-14, f"y_<={t} saw a later input"
            x3 = x.clone()
            x3[t] += 1.0
            out3, _ = module(x3)
            assert (out3[t] - base[t]).abs().max() > 1e-6, f"y_{t} does not see x_{t}"


# ---- streaming --------------------------------------------------------------------------------

STREAM_CONFIGS = [
    dict(depth=3),
    dict(depth=4, kernel_size=5, proj_size=3),
    dict(depth=2, feedback=False, memory_conv=False, channel_norm=False, bias=False),
    dict(depth=1),
    dict(depth=3, batch_first=True),
]


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("config", STREAM_CONFIGS, ids=lambda c: "-".join(
    f"{k}{v}" for k, v in c.items()))
def test_chunks_equal_whole_sequence(cls, config, dtype):
    """Feeding a sequence in chunks with flush=False, passing the state on, gives the same
    outputs, final state and gradients (input, H_0, C_0, parameters) as feeding it whole."""
    T, B = 8, 3
    module = make_tlstm(cls, dtype, seed=11, input_size=3, hidden_size=5, **config)
    x, state = make_inputs(module, T, B, seed=12)
    tdim = 1 if module.batch_first else 0
    whole = forward_backward(module, x, state, flush=False, seed=13)

    outs, st = [], state
    for chunk in torch.split(x, [3, 1, 4], dim=tdim):
        out, st = module(chunk, st, flush=False)
        outs.append(out)
    chunked = results_and_gradients(module, x, state, torch.cat(outs, dim=tdim), *st, seed=13)
    # the same computation in another grouping: only rounding may differ
    tol = 1e-12 if dtype == F64 else 1e-5
    assert_results_close(chunked, whole, tol, context=f"chunks vs whole {config}")


@pytest.mark.parametrize("config", STREAM_CONFIGS, ids=lambda c: "-".join(
    f"{k}{v}" for k, v in c.items()))
def test_flush_equals_zero_padded_streaming(cls, config):
    """flush=True on x equals flush=False on x followed by L-1 zero inputs (whose input row is
    b^x), with the outputs shifted by L-1; the returned state is the one after step T, as
    flush=False on x alone returns it (the flush steps do not advance it)."""
    T, B = 5, 2
    module = make_tlstm(cls, F64, seed=21, input_size=3, hidden_size=5, **config)
    x, state = make_inputs(module, T, B, seed=22)
    L = module.depth
    tdim = 1 if module.batch_first else 0
    with torch.no_grad():
        y, (h, c) = module(x, state, flush=True)
        zeros = torch.zeros_like(x.narrow(tdim, 0, 1)).expand(
            *(L - 1 if d == tdim else s for d, s in enumerate(x.shape)))
        y2, _ = module(torch.cat([x, zeros], dim=tdim), state, flush=False)
        y3, (h3, c3) = module(x, state, flush=False)
    assert y.shape == y2.narrow(tdim, 0, T).shape
    assert_results_close({"y": y, "h": h, "c": c},
                         {"y": y2.narrow(tdim, L - 1, T), "h": h3, "c": c3}, TOL[F64],
                         context=f"flush=True vs padded flush=False {config}")
    if L == 1:  # no delay: flush does nothing
        assert_results_close({"y": y}, {"y": y3}, TOL[F64])


def test_flush_with_lengths_equals_zero_padded_streaming_op():
    """The op with lengths: flush=True equals flush=False on the input followed by L-1 zero
    steps with lengths + L - 1, outputs of sequence b shifted by L-1; its returned state is
    that of flush=False on the input with the same lengths (after step T_b)."""
    T, B, L = 5, 4, 3
    module = make_tlstm(tlstm.TensorizedLSTM, F64, seed=23, input_size=3, hidden_size=4,
                        depth=L)
    x, (h0, c0) = make_inputs(module, T, B, seed=24)
    lengths = torch.tensor([3, 5, 1, 4])
    p = dict(module.named_parameters())
    args = (p["weight_ih"], p["bias_ih"], p["weight_hh"], p["bias_hh"], p["norm_weight"],
            p["norm_bias"])
    with torch.no_grad():
        x_pad = torch.zeros(T + L - 1, B, 3, dtype=F64)
        for b, n in enumerate(lengths.tolist()):
            x_pad[:n, b] = x[:n, b]
        y, h, c = tlstm.ops.tensorized_lstm_sequence(x, h0, c0, *args, lengths, L, 3, True,
                                                     True, True)
        y2, _, _ = tlstm.ops.tensorized_lstm_sequence(x_pad, h0, c0, *args, lengths + L - 1,
                                                      L, 3, True, True, False)
        _, h2, c2 = tlstm.ops.tensorized_lstm_sequence(x, h0, c0, *args, lengths, L, 3, True,
                                                       True, False)
    for b, n in enumerate(lengths.tolist()):
        assert rel_err(y[:n, b], y2[L - 1:L - 1 + n, b]) <= TOL[F64], b
        assert torch.all(y[n:, b] == 0), "outputs past the end must be zero"
    assert_results_close({"h": h, "c": c}, {"h": h2, "c": c2}, TOL[F64])


# ---- depth 1 is an LSTM ---------------------------------------------------------------------


@pytest.mark.parametrize("memory_conv", [False, True])
@pytest.mark.parametrize("kernel_size,feedback", [(3, True), (3, False), (5, True), (5, False)])
@pytest.mark.parametrize("bias", [True, False])
def test_depth1_equals_nn_lstm(cls, bias, kernel_size, feedback, memory_conv):
    """Depth 1 without CN is nn.LSTM(M, M) on x~ = F.linear(x, weight_ih, bias_ih): tap c-1 reads
    the input row and tap c the hidden row (tap c+1.. read rows outside 0..P). With the memory
    convolution on, P = 1 and the replicate padding make every tap read row 1, so Cconv = C."""
    I, M, T, B = 3, 5, 6, 3
    module = make_tlstm(cls, F64, seed=31, input_size=I, hidden_size=M, depth=1,
                        kernel_size=kernel_size, channel_norm=False, memory_conv=memory_conv,
                        feedback=feedback, bias=bias)
    assert module.rows == 1
    c = (kernel_size - 1) // 2
    lstm = nn.LSTM(M, M, dtype=F64)
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(module.weight_hh[:4 * M, :, c - 1])
        lstm.weight_hh_l0.copy_(module.weight_hh[:4 * M, :, c])
        lstm.bias_ih_l0.copy_(module.bias_hh[:4 * M] if bias else torch.zeros(4 * M))
        lstm.bias_hh_l0.zero_()
    x, (h0, c0) = make_inputs(module, T, B, seed=32)
    out, (h, cn) = module(x, (h0, c0))
    x_tilde = F.linear(x, module.weight_ih, module.bias_ih)
    out2, (h2, cn2) = lstm(x_tilde, (h0.transpose(0, 1), c0.transpose(0, 1)))
    assert_results_close({"output": out, "h": h, "c": cn},
                         {"output": out2, "h": h2.transpose(0, 1), "c": cn2.transpose(0, 1)},
                         TOL[F64], context="tLSTM depth 1 vs nn.LSTM")
    # gradients w.r.t. the input and the initial state
    g = upstream(out.shape, 33, F64)
    grads = torch.autograd.grad((out * g).sum() + h.sum(), [x, h0, c0])
    grads2 = torch.autograd.grad((out2 * g).sum() + h2.sum(), [x, h0, c0])
    for name, a, b in zip(("x", "h0", "c0"), grads, grads2):
        assert rel_err(a, b) <= TOL[F64], name


# ---- packed sequences ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("flush", [True, False])
def test_packed_sequence_equals_each_sequence_alone(cls, flush, batch_first, dtype):
    """Each sequence of a packed batch (unsorted lengths) gets the output, final state and
    input / initial-state gradients of running it alone, unbatched; the parameter gradients are
    the sums over the sequences. The runs alone are in float64 (the module's copy), so that a
    float32 packed run is held to the float32 bound against float64: two float32 runs may each
    be within that bound of the truth and still differ by twice it (seen on an Intel Xeon, whose
    MKL rounds batched and unbatched products differently: 1.27e-5).

    The reference module is checked in float64 only: the parity bound is a promise of the
    fused kernels, and the reference's own float32 run, an arbitrary float32 implementation
    (its products are MKL's), came to 1.47e-5 of its float64 run on an AMD EPYC (Zen 3, AVX2)
    for this small, norm-amplified case; its packing is what this checks, in float64."""
    if cls is MODULES["reference"] and dtype == F32:
        pytest.skip("the reference's packing is checked in float64; float32 parity is the "
                    "fused module's contract")
    T, lengths = 6, [4, 6, 1, 3]
    B = len(lengths)
    module = make_tlstm(cls, dtype, seed=41, input_size=3, hidden_size=4, depth=3,
                        proj_size=3, batch_first=batch_first)
    x, state = make_inputs(module, T, B, seed=42)
    packed_in = pack(x, lengths, batch_first)
    out, (h, c) = module(packed_in, state, flush=flush)
    assert isinstance(out, torch.nn.utils.rnn.PackedSequence)
    assert torch.equal(out.batch_sizes, packed_in.batch_sizes)
    assert torch.equal(out.unsorted_indices, packed_in.unsorted_indices)
    padded, out_lengths = pad_packed_sequence(out, batch_first=batch_first)
    assert out_lengths.tolist() == lengths
    params = dict(module.named_parameters())
    g_out = [upstream((n, 3), 50 + b, dtype) for b, n in enumerate(lengths)]
    g_h = upstream(h.shape, 60, dtype)
    g_c = upstream(c.shape, 61, dtype)
    loss = (h * g_h).sum() + (c * g_c).sum()
    for b, n in enumerate(lengths):
        y_b = padded[b, :n] if batch_first else padded[:n, b]
        loss = loss + (y_b * g_out[b]).sum()
    got = torch.autograd.grad(loss, [x, *state, *params.values()])
    tol = TOL[dtype]
    alone = copy.deepcopy(module).to(F64)
    params_alone = list(alone.parameters())
    param_sums = [torch.zeros_like(p) for p in params_alone]
    for b, n in enumerate(lengths):
        x_b = (x[b, :n] if batch_first else x[:n, b]).detach().to(F64).requires_grad_()
        s_b = tuple(s[b].detach().to(F64).requires_grad_() for s in state)
        y, (h_b, c_b) = alone(x_b, s_b, flush=flush)
        assert y.shape == (n, 3) and h_b.shape == (module.rows, 4)
        y_packed_b = padded[b, :n] if batch_first else padded[:n, b]
        assert rel_err(y_packed_b, y) <= tol, f"output of sequence {b}"
        assert rel_err(h[b], h_b) <= tol and rel_err(c[b], c_b) <= tol, f"state of seq {b}"
        loss_b = ((y * g_out[b].to(F64)).sum() + (h_b * g_h[b].to(F64)).sum()
                  + (c_b * g_c[b].to(F64)).sum())
        g = torch.autograd.grad(loss_b, [x_b, *s_b, *params_alone])
        gx = got[0][b, :n] if batch_first else got[0][:n, b]
        assert rel_err(gx, g[0]) <= tol, f"grad x of sequence {b}"
        assert rel_err(got[1][b], g[1]) <= tol and rel_err(got[2][b], g[2]) <= tol
        for k in range(len(param_sums)):
            param_sums[k] += g[3 + k]
    # the padded steps of the input receive no gradient
    for b, n in enumerate(lengths):
        gx_pad = got[0][b, n:] if batch_first else got[0][n:, b]
        assert torch.all(gx_pad == 0)
    for name, a, b in zip(params, got[3:], param_sums):
        assert rel_err(a, b) <= tol, f"grad {name}"


def test_packed_state_follows_original_batch_order(cls):
    """The state returned for a packed input is in the original (unsorted) batch order, and an
    initial state passed in that order is used for the right sequences."""
    T, lengths = 5, [2, 5, 3]
    module = make_tlstm(cls, F64, seed=43, input_size=2, hidden_size=3, depth=2)
    x, state = make_inputs(module, T, 3, seed=44)
    with torch.no_grad():
        _, (h, c) = module(pack(x, lengths, False), state)
        for b, n in enumerate(lengths):
            _, (h_b, c_b) = module(x[:n, b:b + 1], tuple(s[b:b + 1] for s in state))
            assert rel_err(h[b], h_b[0]) <= TOL[F64] and rel_err(c[b], c_b[0]) <= TOL[F64]


# ---- input conventions ----------------------------------------------------------------------


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("flush", [True, False])
def test_unbatched_equals_batch_of_one(cls, flush, batch_first):
    module = make_tlstm(cls, F64, seed=51, input_size=3, hidden_size=4, depth=3, proj_size=2,
                        batch_first=batch_first)
    x = randn((5, 3), 52)
    state = (randn((module.rows, 4), 53), randn((module.rows, 4), 54))
    with torch.no_grad():
        for st in (state, None):
            y, (h, c) = module(x, st, flush=flush)
            assert y.shape == (5, 2) and h.shape == c.shape == (module.rows, 4)
            st1 = None if st is None else tuple(s.unsqueeze(0) for s in st)
            x1 = x.unsqueeze(0 if batch_first else 1)
            y1, (h1, c1) = module(x1, st1, flush=flush)
            y1 = y1.squeeze(0 if batch_first else 1)
            assert_results_close({"y": y, "h": h, "c": c},
                                 {"y": y1, "h": h1.squeeze(0), "c": c1.squeeze(0)}, TOL[F64])


@pytest.mark.parametrize("flush", [True, False])
def test_state_none_equals_zeros(cls, flush):
    module = make_tlstm(cls, F64, seed=55, input_size=3, hidden_size=4, depth=4)
    x = randn((5, 2, 3), 56)
    with torch.no_grad():
        a = module(x, None, flush=flush)
        zeros = torch.zeros(2, module.rows, 4, dtype=F64)
        b = module(x, (zeros, zeros.clone()), flush=flush)
    assert_results_close({"y": a[0], "h": a[1][0], "c": a[1][1]},
                         {"y": b[0], "h": b[1][0], "c": b[1][1]}, TOL[F64])
    # the initial state matters
    with torch.no_grad():
        c = module(x, (zeros + 0.5, zeros - 0.5), flush=flush)
    assert rel_err(c[1][0], a[1][0]) > 1e-6


@pytest.mark.parametrize("flush", [True, False])
def test_batch_first_equals_transposed_time_major(cls, flush):
    """batch_first=True on x.transpose(0, 1) gives the transposed output, the same state (always
    [B, P, M]) and the same gradients as the time-major module on x."""
    tm = make_tlstm(cls, F64, seed=57, input_size=3, hidden_size=4, depth=3, proj_size=2)
    bf = make_tlstm(cls, F64, seed=57, input_size=3, hidden_size=4, depth=3, proj_size=2,
                    batch_first=True)
    x, state = make_inputs(tm, 5, 3, seed=58)
    g_out, g_h, g_c = (upstream(s, 59 + k, F64) for k, s in enumerate(
        [(5, 3, 2), state[0].shape, state[1].shape]))
    results = []
    for module, inp, g in ((tm, x, g_out), (bf, x.transpose(0, 1), g_out.transpose(0, 1))):
        y, (h, c) = module(inp, state, flush=flush)
        assert y.shape == g.shape and h.shape == c.shape == (3, 3, 4)
        loss = (y * g).sum() + (h * g_h).sum() + (c * g_c).sum()
        grads = torch.autograd.grad(loss, [x, *state, *module.parameters()])
        res = {"output": (y if module is tm else y.transpose(0, 1)).detach(),
               "h_n": h.detach(), "c_n": c.detach()}
        res.update({f"grad_{k}": v for k, v in enumerate(grads)})
        results.append(res)
    assert_results_close(results[1], results[0], TOL[F64], context="batch_first")


def test_threads_do_not_change_results():
    """1 and 2 threads agree (to rounding) at a size that splits the steps."""
    module = make_tlstm(tlstm.TensorizedLSTM, F64, seed=62, input_size=6, hidden_size=40,
                        depth=4)
    x, state = make_inputs(module, 4, 8, seed=63)
    with num_threads(1):
        a = forward_backward(module, x, state, seed=64)
    with num_threads(2):
        b = forward_backward(module, x, state, seed=64)
    assert_results_close(b, a, 1e-13)


# ---- parameters -------------------------------------------------------------------------------


@pytest.mark.parametrize("flags", flag_combinations(), ids=lambda f: "-".join(
    ("" if v else "no") + k for k, v in f.items()))
@pytest.mark.parametrize("kernel_size", [3, 5])
def test_parameter_count_independent_of_depth(cls, kernel_size, flags):
    I, M = 7, 6
    want = expected_param_count(I, M, kernel_size, **flags)
    counts = []
    for depth in range(1, 7):
        m = cls(I, M, depth, kernel_size=kernel_size, **flags)
        counts.append(sum(p.numel() for p in m.parameters()))
        c = (kernel_size - 1) // 2
        assert m.rows == (depth - 1) * c + 1
    assert counts == [want] * 6, (counts, want)
    # the projection adds proj_size * M
    m = cls(I, M, 3, kernel_size=kernel_size, proj_size=4, **flags)
    assert sum(p.numel() for p in m.parameters()) == expected_param_count(
        I, M, kernel_size, proj_size=4, **flags)


def test_parameter_count_formula_of_the_spec(cls):
    """The formula as docs/cells.md writes it: I*M + M + K*M*(4M+K) + (4M+K) + 10M."""
    for I, M, K in ((3, 5, 3), (10, 16, 5), (1, 1, 7)):
        want = I * M + M + K * M * (4 * M + K) + (4 * M + K) + 10 * M
        for depth in (1, 2, 5):
            m = cls(I, M, depth, kernel_size=K)
            assert sum(p.numel() for p in m.parameters()) == want


@pytest.mark.parametrize("flags", [dict(), dict(memory_conv=False), dict(feedback=False),
                                   dict(bias=False, channel_norm=False), dict(proj_size=3)])
def test_parameter_names_and_shapes(cls, flags):
    I, M, K = 3, 6, 5
    c = (K - 1) // 2
    m = cls(I, M, 3, kernel_size=K, **flags)
    G = 4 * M + (K if flags.get("memory_conv", True) else 0)
    taps = K if flags.get("feedback", True) else c + 1
    want = {"weight_ih": (M, I), "weight_hh": (G, M, taps)}
    if flags.get("bias", True):
        want.update(bias_ih=(M,), bias_hh=(G,))
    if flags.get("channel_norm", True):
        want.update(norm_weight=(5, M), norm_bias=(5, M))
    if flags.get("proj_size", 0):
        want["weight_proj"] = (flags["proj_size"], M)
    assert {n: tuple(p.shape) for n, p in m.named_parameters()} == want


@pytest.mark.parametrize("dtype", [F64, F32])
def test_initialisation(cls, dtype):
    M = 16
    with torch.random.fork_rng():
        torch.manual_seed(0)
        m = cls(5, M, 3, kernel_size=5, proj_size=4, dtype=dtype)
    bound = 1 / math.sqrt(M)
    for name, p in m.named_parameters():
        assert p.dtype == dtype
        if name == "norm_weight":  # the gains start at 0.5: see test_tensorized_conditioning
            assert torch.equal(p, torch.full_like(p, 0.5))
        elif name == "norm_bias":
            assert torch.equal(p, torch.zeros_like(p))
        else:
            assert p.abs().max() <= bound, name
            # really drawn from the whole interval, not a constant (P(fail) < 1e-9 for a
            # parameter of >= 64 values; the smaller ones only need some spread)
            if p.numel() >= 64:
                assert p.max() > 0.5 * bound and p.min() < -0.5 * bound, name
            else:
                assert p.std() > 0.1 * bound, name
    # two modules get different weights; reset_parameters redraws them
    m2 = cls(5, M, 3, kernel_size=5, proj_size=4, dtype=dtype)
    assert not torch.equal(m.weight_hh, m2.weight_hh)
    before = m.weight_hh.detach().clone()
    m.reset_parameters()
    assert not torch.equal(before, m.weight_hh)


def test_state_dict_round_trip_between_fused_and_reference():
    fused = make_tlstm(tlstm.TensorizedLSTM, F64, seed=70, input_size=3, hidden_size=4,
                       depth=3, proj_size=2)
    ref = tlstm.reference.TensorizedLSTM(3, 4, 3, proj_size=2, dtype=F64)
    ref.load_state_dict(fused.state_dict())
    assert list(fused.state_dict()) == list(ref.state_dict())
    assert fused.rows == ref.rows == 3 and fused.delay == ref.delay == 2
