"""The registered ops torch.ops.tlstm.peephole_lstm_{forward,backward} and the differentiable
wrapper tlstm.ops.peephole_lstm_layer: semantics of one layer-direction (lengths, reverse,
optional tensors) against a per-sequence implementation written from docs/cells.md, gradcheck,
opcheck and argument checks."""
import itertools

import pytest
import torch
from torch.autograd import gradcheck

import tlstm
from helpers import TOL, assert_results_close, noncontiguous, randn, rel_err

OPS = torch.ops.tlstm
F64 = torch.float64


# ---- an independent per-sequence implementation of docs/cells.md, section 1 ------------------


def spec_layer(input, h0, c0, weight_ih, weight_hh, bias_ih=None, bias_hh=None,
               weight_peephole=None, weight_proj=None, lengths=None, reverse=False,
               activation="tanh"):
    """One layer-direction, one sequence at a time: sequence b is x[:lengths[b], b], walked
    forwards or from its last step backwards; outputs past its end are zero."""
    x, w_ih, w_hh, b_ih, b_hh = input, weight_ih, weight_hh, bias_ih, bias_hh
    w_peep, w_proj = weight_peephole, weight_proj
    act = torch.tanh if activation == "tanh" else (lambda v: v)
    T, B, _ = x.shape
    R = w_hh.shape[1]
    zero = x.new_zeros(R)
    outputs = [[zero] * B for _ in range(T)]
    h_n, c_n = [], []
    for b in range(B):
        L = T if lengths is None else int(lengths[b])
        h, c = h0[b], c0[b]
        for t in (range(L - 1, -1, -1) if reverse else range(L)):
            a = x[t, b] @ w_ih.T + h @ w_hh.T
            if b_ih is not None:
                a = a + b_ih
            if b_hh is not None:
                a = a + b_hh
            a_i, a_f, a_g, a_o = a.chunk(4)
            if w_peep is not None:
                a_i = a_i + w_peep[0] * c
                a_f = a_f + w_peep[1] * c
            i, f, g = torch.sigmoid(a_i), torch.sigmoid(a_f), act(a_g)
            c = f * c + i * g
            o = torch.sigmoid(a_o + w_peep[2] * c) if w_peep is not None else torch.sigmoid(a_o)
            h = o * act(c)
            if w_proj is not None:
                h = h @ w_proj.T
            outputs[t][b] = h
        h_n.append(h)
        c_n.append(c)
    out = torch.stack([torch.stack(row) for row in outputs])
    return out, torch.stack(h_n), torch.stack(c_n)


def make_layer_args(T=5, B=4, I=3, H=4, proj=0, bias=(True, True), peephole=True, seed=0,
                    dtype=F64, requires_grad=True):
    R = proj if proj else H
    s = itertools.count(seed * 100)
    args = {
        "input": randn((T, B, I), next(s), dtype),
        "h0": randn((B, R), next(s), dtype, 0.5),
        "c0": randn((B, H), next(s), dtype, 0.5),
        "weight_ih": randn((4 * H, I), next(s), dtype, 0.5),
        "weight_hh": randn((4 * H, R), next(s), dtype, 0.5),
        "bias_ih": randn((4 * H,), next(s), dtype, 0.3) if bias[0] else None,
        "bias_hh": randn((4 * H,), next(s), dtype, 0.3) if bias[1] else None,
        "weight_peephole": randn((3, H), next(s), dtype, 0.7) if peephole else None,
        "weight_proj": randn((R, H), next(s), dtype, 0.5) if proj else None,
    }
    if requires_grad:
        for v in args.values():
            if v is not None:
                v.requires_grad_()
    return args


def run_with_grads(fn, args, lengths, reverse, activation, seed=5):
    out, h_n, c_n = fn(**args, lengths=lengths, reverse=reverse, activation=activation)
    loss = ((out * randn(out.shape, seed, out.dtype)).sum()
            + (h_n * randn(h_n.shape, seed + 1, out.dtype)).sum()
            + (c_n * randn(c_n.shape, seed + 2, out.dtype)).sum())
    names = [k for k, v in args.items() if v is not None]
    grads = torch.autograd.grad(loss, [args[k] for k in names])
    res = {"output": out.detach(), "h_n": h_n.detach(), "c_n": c_n.detach()}
    res.update({"grad_" + k: g for k, g in zip(names, grads)})
    return res


LENGTH_CASES = {
    "none": None,
    "unsorted": [3, 5, 1, 4],
    "all_full": [5, 5, 5, 5],
    "with_zero": [0, 2, 5, 1],  # a sequence of length 0 keeps its initial state
}


@pytest.mark.parametrize("activation", ["tanh", "identity"])
@pytest.mark.parametrize("proj", [0, 2])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", list(LENGTH_CASES))
def test_layer_matches_spec(lengths, reverse, proj, activation):
    lens = LENGTH_CASES[lengths]
    lens_t = None if lens is None else torch.tensor(lens, dtype=torch.int64)
    args = make_layer_args(proj=proj, seed=len(str(lens)) + proj)
    got = run_with_grads(tlstm.ops.peephole_lstm_layer, args, lens_t, reverse, activation)
    want = run_with_grads(spec_layer, args, lens_t, reverse, activation)
    assert_results_close(got, want, TOL[F64], context=f"{lengths} rev={reverse} proj={proj}")
    # the reference module's layer pass follows the same semantics
    ref = tlstm.reference.PeepholeLSTM(3, 4, activation=activation, dtype=F64)
    weights = {k: v for k, v in args.items() if k not in ("input", "h0", "c0")}
    out, h_n, c_n = ref._run_layer_direction(args["input"], args["h0"], args["c0"], weights,
                                             lens_t, reverse)
    for a, b in ((out, want["output"]), (h_n, want["h_n"]), (c_n, want["c_n"])):
        assert rel_err(a, b) <= TOL[F64]


def test_outputs_past_the_end_are_zero_and_state_is_kept():
    args = make_layer_args(seed=3, requires_grad=False)
    lens = torch.tensor([0, 2, 5, 1])
    for reverse in (False, True):
        out, h_n, c_n = tlstm.ops.peephole_lstm_layer(**args, lengths=lens, reverse=reverse)
        for b, L in enumerate(lens.tolist()):
            assert torch.equal(out[L:, b], torch.zeros_like(out[L:, b]))
            if L > 0:
                assert out[:L, b].abs().min() > 0
        assert torch.equal(h_n[0], args["h0"][0]) and torch.equal(c_n[0], args["c0"][0])
        # reverse starts at lengths[b]-1: its h_n is the output at t = 0, forward at t = L-1
        b = 1
        if reverse:
            assert torch.equal(out[0, b], h_n[b])
        else:
            assert torch.equal(out[lens[b] - 1, b], h_n[b])


@pytest.mark.parametrize("bias", [(True, False), (False, True), (False, False)])
def test_optional_biases(bias):
    """Either bias may be absent; each present bias gets the same gradient."""
    args = make_layer_args(bias=bias, seed=8)
    got = run_with_grads(tlstm.ops.peephole_lstm_layer, args, None, False, "tanh")
    want = run_with_grads(spec_layer, args, None, False, "tanh")
    assert_results_close(got, want, TOL[F64])


def test_no_peephole_equals_zero_peephole():
    args = make_layer_args(peephole=False, seed=9)
    got = run_with_grads(tlstm.ops.peephole_lstm_layer, args, None, True, "tanh")
    zeros = dict(args, weight_peephole=torch.zeros(3, 4, dtype=F64, requires_grad=True))
    want = run_with_grads(tlstm.ops.peephole_lstm_layer, zeros, None, True, "tanh")
    assert "grad_weight_peephole" not in got
    del want["grad_weight_peephole"]
    assert_results_close(got, want, TOL[F64])


def test_only_some_inputs_require_grad():
    """Gradients for a subset of the inputs equal those computed with all of them."""
    args = make_layer_args(proj=2, seed=10)
    full = run_with_grads(tlstm.ops.peephole_lstm_layer, args, None, False, "tanh")
    for subset in (["weight_peephole"], ["input"], ["h0", "c0"], ["weight_proj", "bias_hh"]):
        part = {k: (v.detach().requires_grad_(k in subset) if v is not None else None)
                for k, v in args.items()}
        out, h_n, c_n = tlstm.ops.peephole_lstm_layer(**part)
        loss = ((out * randn(out.shape, 5, F64)).sum() + (h_n * randn(h_n.shape, 6, F64)).sum()
                + (c_n * randn(c_n.shape, 7, F64)).sum())
        grads = torch.autograd.grad(loss, [part[k] for k in subset])
        for k, g in zip(subset, grads):
            assert rel_err(g, full["grad_" + k]) <= TOL[F64], k


def test_no_grad_runs_inference_path():
    args = make_layer_args(seed=11, proj=3)
    with torch.no_grad():
        out, h_n, c_n = tlstm.ops.peephole_lstm_layer(**args)
    assert not out.requires_grad
    want = spec_layer(**args)
    for a, b in zip((out, h_n, c_n), want):
        assert rel_err(a, b) <= TOL[F64]


# ---- gradcheck ------------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["tanh", "identity"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("proj", [0, 2])
@pytest.mark.parametrize("lengths", [None, [2, 4, 1]])
def test_gradcheck_layer(lengths, proj, reverse, activation):
    args = make_layer_args(T=4, B=3, I=2, H=3, proj=proj, seed=12)
    names = [k for k, v in args.items() if v is not None]
    lens = None if lengths is None else torch.tensor(lengths)

    def fn(*tensors):
        kw = dict(zip(names, tensors))
        return tlstm.ops.peephole_lstm_layer(**kw, lengths=lens, reverse=reverse,
                                             activation=activation)

    assert gradcheck(fn, [args[k] for k in names], eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("packed", [False, True])
def test_gradcheck_module(packed):
    """gradcheck through the whole module (2 layers, bidirectional, projection) w.r.t. the
    input, the initial state and every parameter."""
    from torch.func import functional_call

    from helpers import pack

    module = tlstm.PeepholeLSTM(2, 3, num_layers=2, bidirectional=True, proj_size=2,
                                batch_first=True, dtype=F64)
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in module.named_parameters()]
    x = randn((3, 4, 2), 1, F64).requires_grad_()
    h0 = randn((4, 3, 2), 2, F64, 0.5).requires_grad_()
    c0 = randn((4, 3, 3), 3, F64, 0.5).requires_grad_()
    lengths = [4, 1, 3]

    def fn(x, h0, c0, *ps):
        inp = pack(x, lengths, True) if packed else x
        out, (h, c) = functional_call(module, dict(zip(names, ps)), (inp, (h0, c0)))
        return (out.data if packed else out), h, c

    assert gradcheck(fn, [x, h0, c0, *params], eps=1e-6, atol=1e-7, rtol=1e-5)


# ---- opcheck --------------------------------------------------------------------------------


def _forward_args(args, lengths, reverse, activation, training):
    return (args["input"], args["h0"], args["c0"], args["weight_ih"], args["weight_hh"],
            args["bias_ih"], args["bias_hh"], args["weight_peephole"], args["weight_proj"],
            lengths, reverse, activation, training)


OPCHECK_CASES = [
    dict(proj=0, lengths=None, reverse=False, activation="tanh"),
    dict(proj=2, lengths=[3, 5, 1, 4], reverse=True, activation="tanh"),
    dict(proj=0, lengths=[5, 2, 2, 4], reverse=False, activation="identity", peephole=False),
]


@pytest.mark.parametrize("case", range(len(OPCHECK_CASES)))
def test_opcheck_forward(case):
    c = dict(OPCHECK_CASES[case])
    lens = None if c["lengths"] is None else torch.tensor(c["lengths"])
    op = OPS.peephole_lstm_forward.default
    args = make_layer_args(proj=c["proj"], peephole=c.get("peephole", True), seed=13)
    torch.library.opcheck(op, _forward_args(args, lens, c["reverse"], c["activation"], True))
    args = make_layer_args(proj=c["proj"], peephole=c.get("peephole", True), seed=13,
                           requires_grad=False)
    torch.library.opcheck(op, _forward_args(args, lens, c["reverse"], c["activation"], False))


@pytest.mark.parametrize("need_grad_input", [True, False])
@pytest.mark.parametrize("case", range(len(OPCHECK_CASES)))
def test_opcheck_backward(case, need_grad_input):
    c = dict(OPCHECK_CASES[case])
    lens = None if c["lengths"] is None else torch.tensor(c["lengths"])
    args = make_layer_args(proj=c["proj"], peephole=c.get("peephole", True), seed=14,
                           requires_grad=False)
    out, h_n, c_n, gates, hs, cs = OPS.peephole_lstm_forward(
        *_forward_args(args, lens, c["reverse"], c["activation"], True))
    bargs = (randn(out.shape, 1, F64), randn(h_n.shape, 2, F64), randn(c_n.shape, 3, F64),
             args["input"], args["weight_ih"], args["weight_hh"], args["weight_peephole"],
             args["weight_proj"], lens, gates, hs, cs, c["reverse"], c["activation"],
             need_grad_input)
    torch.library.opcheck(OPS.peephole_lstm_backward.default, bargs)
    grads = OPS.peephole_lstm_backward(*bargs)
    assert len(grads) == 8
    assert grads[0].shape == ((5, 4, 3) if need_grad_input else (0,))


NONCONTIG_FORWARD = ["input", "h0", "c0", "weight_ih", "weight_hh", "bias_ih",
                     "weight_peephole", "weight_proj"]


@pytest.mark.parametrize("name", NONCONTIG_FORWARD)
def test_opcheck_forward_noncontiguous(name):
    """The ops take non-contiguous arguments (the module passes transposed views with
    batch_first=True): opcheck, including the fake (shape/stride) function, still passes."""
    args = make_layer_args(proj=2, seed=21, requires_grad=False)
    args[name] = noncontiguous(args[name])
    lens = torch.tensor([3, 5, 1, 4])
    op = OPS.peephole_lstm_forward.default
    torch.library.opcheck(op, _forward_args(args, lens, False, "tanh", False))
    args = {k: v.requires_grad_() for k, v in args.items() if v is not None}
    args.setdefault("bias_hh", None)
    torch.library.opcheck(op, _forward_args(args, lens, False, "tanh", True))


NONCONTIG_BACKWARD = ["grad_output", "grad_h_n", "grad_c_n", "input", "weight_ih", "weight_hh",
                      "weight_peephole", "weight_proj"]


@pytest.mark.parametrize("name", NONCONTIG_BACKWARD)
def test_opcheck_backward_noncontiguous(name):
    """opcheck of the backward op with one non-contiguous argument: the fake function must
    describe the same output strides as the kernel returns."""
    args = make_layer_args(proj=2, seed=22, requires_grad=False)
    lens = torch.tensor([3, 5, 1, 4])
    out, h_n, c_n, gates, hs, cs = OPS.peephole_lstm_forward(
        *_forward_args(args, lens, False, "tanh", True))
    b = {"grad_output": randn(out.shape, 1, F64), "grad_h_n": randn(h_n.shape, 2, F64),
         "grad_c_n": randn(c_n.shape, 3, F64), "input": args["input"],
         "weight_ih": args["weight_ih"], "weight_hh": args["weight_hh"],
         "weight_peephole": args["weight_peephole"], "weight_proj": args["weight_proj"]}
    reference = OPS.peephole_lstm_backward(
        *b.values(), lens, gates, hs, cs, False, "tanh", True)
    b[name] = noncontiguous(b[name])
    bargs = (*b.values(), lens, gates, hs, cs, False, "tanh", True)
    # same values whatever the layout
    for g, r in zip(OPS.peephole_lstm_backward(*bargs), reference):
        assert rel_err(g, r) <= TOL[F64]
    torch.library.opcheck(OPS.peephole_lstm_backward.default, bargs)


def test_forward_saved_buffers():
    """training=True returns the saved buffers, training=False empty ones; same results."""
    args = make_layer_args(proj=2, seed=15, requires_grad=False)
    lens = torch.tensor([3, 5, 1, 4])
    train = OPS.peephole_lstm_forward(*_forward_args(args, lens, True, "tanh", True))
    infer = OPS.peephole_lstm_forward(*_forward_args(args, lens, True, "tanh", False))
    T, B, H, R = 5, 4, 4, 2
    assert train[3].shape == (T, B, 4 * H)
    assert train[4].shape == (T + 1, B, R)
    assert train[5].shape == (T + 1, B, H)
    for t in infer[3:]:
        assert t.numel() == 0
    for a, b in zip(train[:3], infer[:3]):
        assert rel_err(a, b) <= TOL[F64]


def test_training_false_with_grad_raises_immediately():
    args = make_layer_args(seed=16)
    with pytest.raises(RuntimeError, match="training=False"):
        OPS.peephole_lstm_forward(*_forward_args(args, None, False, "tanh", False))


def test_training_false_with_grad_disabled_is_fine():
    args = make_layer_args(seed=16)
    with torch.no_grad():
        out = OPS.peephole_lstm_forward(*_forward_args(args, None, False, "tanh", False))
    assert rel_err(out[0], spec_layer(**args)[0].detach()) <= TOL[F64]


# ---- dtypes and argument checks ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int64])
def test_unsupported_dtype_on_cpu_op(dtype):
    """The CPU op takes float32 and float64 (tlstm.ops widens the half types for it; see
    test_half_and_autocast.py): other dtypes raise an error naming what it supports."""
    args = make_layer_args(seed=17, requires_grad=False)
    args = {k: (v.to(dtype) if v is not None else None) for k, v in args.items()}
    with pytest.raises(RuntimeError, match="Float, Double"):
        OPS.peephole_lstm_forward(*_forward_args(args, None, False, "tanh", False))


def test_activation_checks():
    with pytest.raises(ValueError) as exc:
        tlstm.PeepholeLSTM(3, 4, activation="relu")
    assert "tanh" in str(exc.value) and "identity" in str(exc.value) and "relu" in str(exc.value)
    with pytest.raises(ValueError):
        tlstm.reference.PeepholeLSTM(3, 4, activation="relu")
    args = make_layer_args(seed=18, requires_grad=False)
    with pytest.raises(RuntimeError) as exc:
        OPS.peephole_lstm_forward(*_forward_args(args, None, False, "relu", False))
    assert "tanh" in str(exc.value) and "identity" in str(exc.value)


@pytest.mark.parametrize("name,bad,words", [
    ("weight_ih", lambda a: a["weight_ih"][:, :2], ["weight_ih", "[16, 3]", "[16, 2]"]),
    ("weight_hh", lambda a: a["weight_hh"][:15], ["weight_hh"]),
    ("h0", lambda a: a["h0"][:3], ["h0", "[4, 4]", "[3, 4]"]),
    ("c0", lambda a: a["c0"].float(), ["c0", "Double", "Float"]),
    ("bias_ih", lambda a: a["bias_ih"][:5], ["bias_ih"]),
    ("weight_peephole", lambda a: a["weight_peephole"][:2], ["weight_peephole", "[3, 4]"]),
    ("weight_proj", lambda a: randn((3, 4), 1, F64), ["weight_proj", "[4, 4]", "[3, 4]"]),
])
def test_op_argument_checks(name, bad, words):
    args = make_layer_args(seed=19, requires_grad=False)
    args[name] = bad(args)
    with pytest.raises(RuntimeError) as exc:
        OPS.peephole_lstm_forward(*_forward_args(args, None, False, "tanh", False))
    for w in words:
        assert w in str(exc.value), (w, str(exc.value))


def test_op_lengths_checks():
    args = make_layer_args(seed=20, requires_grad=False)
    T = args["input"].shape[0]
    for lens, word in ((torch.tensor([1, 2, 3, 4], dtype=torch.int32), "int64"),
                       (torch.tensor([1, 2, 3]), "lengths"),
                       (torch.tensor([1, -1, 3, 2]), rf"\[0, T\] = \[0, {T}\], got values from -1 to 3"),
                       (torch.tensor([1, T + 1, 3, 2]), rf"\[0, {T}\], got values from 1 to {T + 1}")):
        with pytest.raises(RuntimeError, match=word):
            OPS.peephole_lstm_forward(*_forward_args(args, lens, False, "tanh", False))
    # the bounds themselves are valid lengths
    OPS.peephole_lstm_forward(*_forward_args(args, torch.tensor([0, T, 1, T]), False, "tanh",
                                             False))
