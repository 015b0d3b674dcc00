"""The registered ops torch.ops.tlstm.tensorized_lstm_{forward,backward} and their
differentiable wrapper tlstm.ops.tensorized_lstm_sequence: gradcheck (float64), opcheck of both
ops (fake functions, autograd registration, schema), the training flag, and
torch.compile(fullgraph=True) of the module against eager."""
import pytest
import torch
from torch.autograd import gradcheck
from torch.func import functional_call

import tlstm
from helpers import TOL, assert_results_close, noncontiguous, num_threads, pack, randn, rel_err
from tensorized_helpers import (
    F64,
    backward_op_args,
    forward_backward,
    make_inputs,
    make_tlstm,
    op_args,
    spec_tlstm,
    upstream,
)

OPS = torch.ops.tlstm


# ---- gradcheck ------------------------------------------------------------------------------

GRADCHECK_CASES = {
    "default": (dict(depth=3), None, True),
    "lengths": (dict(depth=3), [3, 1], True),
    "lengths_no_flush": (dict(depth=3), [1, 3], False),
    "no_flush": (dict(depth=2, kernel_size=5), None, False),
    "no_feedback": (dict(depth=3, feedback=False), [2, 3], True),
    "no_feedback_k5": (dict(depth=3, kernel_size=5, feedback=False), None, True),
    "no_memconv": (dict(depth=3, memory_conv=False), None, True),
    "no_cn_no_bias": (dict(depth=2, channel_norm=False, bias=False), [3, 2], True),
    "depth1": (dict(depth=1), None, True),
    "plane_lengths": (dict(depth=3, tensor_dim=3), [3, 1], True),
    "plane_k5_no_feedback_no_flush": (dict(depth=2, kernel_size=5, feedback=False,
                                           tensor_dim=3), None, False),
}


@pytest.mark.parametrize("case", list(GRADCHECK_CASES))
def test_gradcheck_op_wrapper(case):
    """gradcheck of tlstm.ops.tensorized_lstm_sequence w.r.t. the input, H_0, C_0 and every
    weight (CN and memory convolution on unless the case turns them off)."""
    config, lengths, flush = GRADCHECK_CASES[case]
    T, B = 3, 2
    module = make_tlstm(tlstm.TensorizedLSTM, F64, seed=len(case), input_size=2,
                        hidden_size=3, **config)
    x, (h0, c0) = make_inputs(module, T, B, seed=3)
    lens = None if lengths is None else torch.tensor(lengths)
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]

    def fn(x, h0, c0, *ps):
        return tlstm.ops.tensorized_lstm_sequence(
            *op_args(module, x, h0, c0, lens, flush, params=dict(zip(names, ps))))

    with num_threads(1):  # hundreds of tiny runs: threads would only add overhead
        assert gradcheck(fn, [x, h0, c0, *params], eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("packed", [False, True])
def test_gradcheck_module(packed):
    """gradcheck through the module (projection, batch_first, packed unsorted lengths)."""
    module = tlstm.TensorizedLSTM(2, 3, 2, proj_size=2, batch_first=True, dtype=F64)
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]
    with torch.no_grad():
        params[names.index("norm_weight")].uniform_(-1.2, 1.2)
        params[names.index("norm_bias")].uniform_(-0.7, 0.7)
    x = randn((3, 3, 2), 1, F64).requires_grad_()
    h0 = randn((3, module.rows, 3), 2, F64, 0.5).requires_grad_()
    c0 = randn((3, module.rows, 3), 3, F64, 0.5).requires_grad_()
    lengths = [2, 3, 1]

    def fn(x, h0, c0, *ps):
        inp = pack(x, lengths, True) if packed else x
        out, (h, c) = functional_call(module, dict(zip(names, ps)), (inp, (h0, c0)))
        return (out.data if packed else out), h, c

    with num_threads(1):  # hundreds of tiny runs: threads would only add overhead
        assert gradcheck(fn, [x, h0, c0, *params], eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradcheck_subset_of_inputs():
    """Gradients for a subset of the leaves (only the input, only the norm parameters, only the
    state) equal those computed with all leaves requiring grad."""
    module = make_tlstm(tlstm.TensorizedLSTM, F64, seed=5, input_size=3, hidden_size=4,
                        depth=3)
    x, state = make_inputs(module, 4, 2, seed=6)
    full = forward_backward(module, x, state, seed=7)
    for subset in (["input"], ["norm_weight", "norm_bias"], ["h0", "c0"], ["weight_hh"]):
        m = make_tlstm(tlstm.TensorizedLSTM, F64, seed=5, input_size=3, hidden_size=4,
                       depth=3)
        for n, p in m.named_parameters():
            p.requires_grad_(n in subset)
        xs = x.detach().requires_grad_("input" in subset)
        h0 = state[0].detach().requires_grad_("h0" in subset)
        c0 = state[1].detach().requires_grad_("c0" in subset)
        out, (h, c) = m(xs, (h0, c0))
        loss = ((out * upstream(out.shape, 7, F64)).sum() + (h * upstream(h.shape, 8, F64)).sum()
                + (c * upstream(c.shape, 9, F64)).sum())
        leaves = {"input": xs, "h0": h0, "c0": c0, **dict(m.named_parameters())}
        grads = torch.autograd.grad(loss, [leaves[k] for k in subset])
        for k, g in zip(subset, grads):
            assert rel_err(g, full["grad_" + k]) <= TOL[F64], k


# ---- the raw ops ------------------------------------------------------------------------------


def raw_args(config, T=4, B=3, lengths=None, seed=0, requires_grad=False, flush=True):
    """(args of tensorized_lstm_forward without `training`, the module) for a configuration."""
    module = make_tlstm(tlstm.TensorizedLSTM, F64, seed=seed, input_size=3, hidden_size=4,
                        **config)
    x, (h0, c0) = make_inputs(module, T, B, seed=seed + 1)
    lens = None if lengths is None else torch.tensor(lengths, dtype=torch.int64)
    p = {n: q.detach().clone().requires_grad_(requires_grad)
         for n, q in module.named_parameters()}
    x, h0, c0 = (t.detach().requires_grad_(requires_grad) for t in (x, h0, c0))
    return op_args(module, x, h0, c0, lens, flush, params=p), module


OPCHECK_CASES = {
    "default": (dict(depth=3), None, True),
    "lengths_k5": (dict(depth=3, kernel_size=5), [4, 1, 3], True),
    "no_flush_lengths": (dict(depth=4), [2, 4, 3], False),
    "no_feedback_no_memconv": (dict(depth=3, feedback=False, memory_conv=False), None, True),
    "no_cn_no_bias": (dict(depth=2, channel_norm=False, bias=False), [4, 4, 1], False),
    "depth1": (dict(depth=1), None, True),
    "plane_lengths": (dict(depth=3, tensor_dim=3), [4, 1, 3], True),
    "plane_k5_no_feedback_no_flush": (dict(depth=2, kernel_size=5, feedback=False,
                                           tensor_dim=3), None, False),
}


@pytest.mark.parametrize("case", list(OPCHECK_CASES))
def test_opcheck_forward(case):
    config, lengths, flush = OPCHECK_CASES[case]
    op = OPS.tensorized_lstm_forward.default
    args, _ = raw_args(config, lengths=lengths, seed=11, requires_grad=True, flush=flush)
    torch.library.opcheck(op, (*args, True))
    args, _ = raw_args(config, lengths=lengths, seed=11, requires_grad=False, flush=flush)
    torch.library.opcheck(op, (*args, False))


@pytest.mark.parametrize("need_grad_input", [True, False])
@pytest.mark.parametrize("case", list(OPCHECK_CASES))
def test_opcheck_backward(case, need_grad_input):
    config, lengths, flush = OPCHECK_CASES[case]
    args, module = raw_args(config, lengths=lengths, seed=12, flush=flush)
    outs = OPS.tensorized_lstm_forward(*args, True)
    x, h0, c0, w_ih, b_ih, w_hh, b_hh, nw, nb = args[:9]
    grads = [randn(t.shape, k, F64) for k, t in enumerate(outs[:3], 1)]
    bargs = backward_op_args(args, outs, grads, need_grad_input)
    torch.library.opcheck(OPS.tensorized_lstm_backward.default, bargs)
    grads = OPS.tensorized_lstm_backward(*bargs)
    assert len(grads) == 9
    assert grads[0].shape == (x.shape if need_grad_input else (0,))
    for g, like in zip(grads[1:], (h0, c0, w_ih, b_ih, w_hh, b_hh, nw, nb)):
        if like is not None:
            assert g.shape == like.shape


def _backward_args(**replace):
    """Arguments of tensorized_lstm_backward for one forward, with some replaced by name."""
    args, _ = raw_args(dict(depth=3), seed=13)
    outs = OPS.tensorized_lstm_forward(*args, True)
    grads = [randn(t.shape, k, F64) for k, t in enumerate(outs[:3], 1)]
    return backward_op_args(args, outs, grads, **replace)


@pytest.mark.parametrize("name, bad, message", [
    # a narrower norm_weight was read past its end before it was checked
    ("norm_weight", lambda t: t[:, :2].contiguous(), r"norm_weight of shape \[5, M\] = \[5, 4\], got \[5, 2\]"),
    ("norm_bias", lambda t: t[:3].contiguous(), r"norm_bias of shape \[5, M\] = \[5, 4\], got \[3, 4\]"),
    ("norm_weight", lambda t: t.float(), "norm_weight of dtype Double .*got Float"),
    ("norm_bias", None, "norm_weight and norm_bias go together"),
    ("q", lambda t: t.float(), "q of dtype Double .*got Float"),
    ("norm_hat", lambda t: t.float(), "norm_hat of dtype Double .*got Float"),
    ("norm_rstd", lambda t: t.float(), "norm_rstd of dtype Double .*got Float"),
    ("cells", lambda t: t.float(), "cells of dtype Double .*got Float"),
    # the state's sizes were read from grad_h_n, whose errors then named it h0
    ("grad_h_n", lambda t: t[:, :2].contiguous(), r"grad_h_n of shape \[B, P, M\] = \[3, 3, 4\], got \[3, 2, 4\]"),
    ("grad_h_n", lambda t: t[0].contiguous(), r"grad_h_n of shape \[B, P, M\] = \[3, 3, 4\], got \[3, 4\]"),
])
def test_backward_op_argument_checks(name, bad, message):
    """The backward op names the argument that does not fit, with the expected and actual
    value, for the parameters and the saved buffers it is handed."""
    OPS.tensorized_lstm_backward(*_backward_args())  # the unchanged arguments are accepted
    with pytest.raises(RuntimeError, match=message):
        OPS.tensorized_lstm_backward(*_backward_args(**{name: bad}))


# positions in the forward's arguments: input, h0, weight_hh, norm_weight
@pytest.mark.parametrize("position", [0, 1, 5, 7])
def test_opcheck_noncontiguous_arguments(position):
    """A non-contiguous argument (the module hands the op a transposed input with batch_first):
    same values, and opcheck (fake functions included) passes for forward and backward."""
    args, _ = raw_args(dict(depth=3), lengths=[4, 2, 3], seed=19)
    want = OPS.tensorized_lstm_forward(*args, True)
    a = list(args)
    a[position] = noncontiguous(a[position]).requires_grad_(a[position].requires_grad)
    got = OPS.tensorized_lstm_forward(*a, True)
    for g, w in zip(got[:3], want[:3]):
        assert rel_err(g, w) <= TOL[F64]
    torch.library.opcheck(OPS.tensorized_lstm_forward.default, (*a, False))
    a_grad = [t.detach().requires_grad_() if isinstance(t, torch.Tensor) and
              t.is_floating_point() else t for t in a]
    torch.library.opcheck(OPS.tensorized_lstm_forward.default, (*a_grad, True))
    out, h_n, c_n, *saved = got
    go = noncontiguous(randn(out.shape, 1, F64))
    bargs = (go, randn(h_n.shape, 2, F64), randn(c_n.shape, 3, F64), a[0], a[3], a[5], a[7],
             a[8], a[9], *saved, *a[10:15], True)
    torch.library.opcheck(OPS.tensorized_lstm_backward.default, bargs)


def test_backward_op_matches_autograd_of_the_spec():
    """The backward op's nine gradients against autograd through spec_tlstm (lengths, flush)."""
    config = dict(depth=3, kernel_size=5, proj_size=0)
    lengths = [3, 4, 1]
    args, module = raw_args(config, lengths=lengths, seed=13)
    out, h_n, c_n, *saved = OPS.tensorized_lstm_forward(*args, True)
    (x, h0, c0, w_ih, b_ih, w_hh, b_hh, nw, nb, lens, depth, K, feedback, memory_conv,
     flush) = args
    g = (randn(out.shape, 1, F64), randn(h_n.shape, 2, F64), randn(c_n.shape, 3, F64))
    grads = OPS.tensorized_lstm_backward(*g, x, w_ih, w_hh, nw, nb, lens, *saved, depth, K,
                                         feedback, memory_conv, flush, True)
    leaves = [t.detach().requires_grad_() for t in (x, h0, c0)]
    params = dict(module.named_parameters())
    y, h, c = spec_tlstm(module, *leaves, lengths=lengths, flush=flush)
    assert_results_close({"out": out, "h": h_n, "c": c_n},
                         {"out": y.detach(), "h": h.detach(), "c": c.detach()}, TOL[F64])
    loss = (y * g[0]).sum() + (h * g[1]).sum() + (c * g[2]).sum()
    order = ["weight_ih", "bias_ih", "weight_hh", "bias_hh", "norm_weight", "norm_bias"]
    want = torch.autograd.grad(loss, leaves + [params[n] for n in order])
    names = ["input", "h0", "c0"] + order
    assert_results_close(dict(zip(names, grads)), dict(zip(names, want)), TOL[F64])


def test_forward_saved_buffers_and_training_flag():
    """training=True returns the saved buffers, training=False empty ones; same results."""
    args, _ = raw_args(dict(depth=3), lengths=[4, 2, 3], seed=14)
    train = OPS.tensorized_lstm_forward(*args, True)
    infer = OPS.tensorized_lstm_forward(*args, False)
    assert len(train) == len(infer) == 9
    for t in infer[3:]:
        assert t.numel() == 0
    for t in train[3:]:
        assert t.numel() > 0
    for a, b in zip(train[:3], infer[:3]):
        assert rel_err(a, b) <= TOL[F64]


def test_training_false_with_grad_raises():
    args, _ = raw_args(dict(depth=2), seed=15, requires_grad=True)
    with pytest.raises(RuntimeError, match="training=False"):
        OPS.tensorized_lstm_forward(*args, False)
    with torch.no_grad():
        out = OPS.tensorized_lstm_forward(*args, False)
    assert out[0].shape == (4, 3, 4)


def test_wrapper_without_grad_uses_inference_path():
    args, module = raw_args(dict(depth=3), seed=16, requires_grad=False)
    out, h, c = tlstm.ops.tensorized_lstm_sequence(*args)
    assert not out.requires_grad
    with torch.no_grad():
        y, hs, cs = spec_tlstm(module, args[0], args[1], args[2])
    assert_results_close({"o": out, "h": h, "c": c}, {"o": y, "h": hs, "c": cs}, TOL[F64])


@pytest.mark.parametrize("dtype,name", [(torch.float16, "Half"), (torch.bfloat16, "BFloat16"),
                                        (torch.int64, "Long")], ids=["f16", "bf16", "i64"])
def test_unsupported_dtype_on_cpu_op(dtype, name):
    """The CPU op itself runs float32 and float64 (the module widens the half types first) and
    says so, naming the dtype it got."""
    args, _ = raw_args(dict(depth=2), seed=17)
    args = tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                 for a in args)
    with pytest.raises(RuntimeError, match=rf"tensorized_lstm_forward on CPU supports dtypes "
                                           rf"Float, Double, got {name}$"):
        OPS.tensorized_lstm_forward(*args, False)


def test_op_argument_checks():
    """The op refuses arguments of the wrong shape (docs/cells.md layouts)."""
    args, _ = raw_args(dict(depth=3), seed=18)
    bad = {  # position: (argument, the message naming it with expected and actual shapes)
        2: (args[2][:, :2], r"expected c0 of shape \[B, P, M\] = \[3, 3, 4\], got \[3, 2, 4\]"),
        3: (args[3][:, :2], r"expected weight_ih of shape \[M, I\] = \[4, 3\], got \[4, 2\]"),
        5: (args[5][:, :, :2],  # too few taps
            r"expected weight_hh of shape \[G, M, K'\] = \[19, 4, 3\], got \[19, 4, 2\]"),
        9: (torch.tensor([1, 2]), r"expected lengths of shape \[B\] = \[3\], got \[2\]"),
    }
    for k, (v, message) in bad.items():
        a = list(args)
        a[k] = v
        with pytest.raises(RuntimeError, match=message):
            OPS.tensorized_lstm_forward(*a, False)
    T = args[0].shape[0]
    for values, got in (([-2, 1, 2], "-2 to 2"), ([1, T + 3, 2], f"1 to {T + 3}")):
        a = list(args)
        a[9] = torch.tensor(values)  # lengths outside [0, T]
        with pytest.raises(RuntimeError, match=rf"lengths value in \[0, T\] = \[0, {T}\], got values from {got}"):
            OPS.tensorized_lstm_forward(*a, False)
    a = list(args)
    a[11] = 4  # even kernel size
    with pytest.raises(RuntimeError, match="kernel_size"):
        OPS.tensorized_lstm_forward(*a, False)


# ---- torch.compile ---------------------------------------------------------------------------


@pytest.mark.parametrize("tensor_dim", [2, 3])
def test_compile_fullgraph_matches_eager(tensor_dim):
    """torch.compile(fullgraph=True) traces the module (batch_first: a transposed input view,
    projection, initial state) without graph breaks, with eager's outputs and gradients."""
    torch._dynamo.reset()
    try:
        model = make_tlstm(tlstm.TensorizedLSTM, F64, seed=21, input_size=3, hidden_size=4,
                           depth=3, proj_size=2, batch_first=True, tensor_dim=tensor_dim)
        compiled = torch.compile(model, fullgraph=True)
        for seed in (22, 25):  # the second call reuses the graph
            x, state = make_inputs(model, 5, 3, seed=seed)
            want = forward_backward(model, x, state, seed=seed + 1)
            got = forward_backward(compiled, x, state, seed=seed + 1)
            got = {k.replace("_orig_mod.", ""): v for k, v in got.items()}
            assert_results_close(got, want, TOL[F64], context=f"compiled vs eager ({seed})")
    finally:
        torch._dynamo.reset()


def test_compile_fullgraph_no_flush_lengths_op():
    """The op with lengths and flush=False under torch.compile(fullgraph=True)."""
    torch._dynamo.reset()
    try:
        args, _ = raw_args(dict(depth=3, kernel_size=5), lengths=[4, 1, 3], seed=26,
                           flush=False, requires_grad=True)

        def fn(*a):
            out, h, c = tlstm.ops.tensorized_lstm_sequence(*a)
            return (out * 1.5).sum() + h.pow(2).sum() + c.sum()

        tensors = [k for k, a in enumerate(args) if isinstance(a, torch.Tensor)
                   and a.requires_grad]
        want_loss = fn(*args)
        want = torch.autograd.grad(want_loss, [args[k] for k in tensors])
        got_loss = torch.compile(fn, fullgraph=True)(*args)
        got = torch.autograd.grad(got_loss, [args[k] for k in tensors])
        assert rel_err(got_loss, want_loss) <= TOL[F64]
        for k, a, b in zip(tensors, got, want):
            assert rel_err(a, b) <= TOL[F64], k
    finally:
        torch._dynamo.reset()


@pytest.mark.parametrize("flush", [True, False])
def test_op_lengths_with_zero_and_full_lengths(flush):
    """The op (unlike PackedSequence) takes a zero length: that sequence outputs zeros and,
    with flush, still runs its L-1 padded steps (input row b^x); a length equal to T is the same
    as no lengths. Values and gradients against spec_tlstm."""
    args, module = raw_args(dict(depth=3), lengths=[0, 4, 2], seed=27, requires_grad=True,
                            flush=flush)
    out, h, c = tlstm.ops.tensorized_lstm_sequence(*args)
    assert torch.all(out[:, 0] == 0)
    if not flush:  # no step at all: the initial state comes back
        assert torch.equal(h[0], args[1][0]) and torch.equal(c[0], args[2][0])
    leaves = [t.detach().requires_grad_() for t in args[:3]]
    y, hs, cs = spec_tlstm(module, *leaves, lengths=[0, 4, 2], flush=flush)
    assert_results_close({"o": out, "h": h, "c": c}, {"o": y, "h": hs, "c": cs}, TOL[F64])
    g = [upstream(t.shape, 30 + k, F64) for k, t in enumerate((out, h, c))]
    got = torch.autograd.grad(sum((t * gk).sum() for t, gk in zip((out, h, c), g)), args[:3])
    want = torch.autograd.grad(sum((t * gk).sum() for t, gk in zip((y, hs, cs), g)), leaves)
    assert_results_close(dict(zip("xhc", got)), dict(zip("xhc", want)), TOL[F64])

    full_args = list(args)
    full_args[9] = torch.full((3,), 4, dtype=torch.int64)
    none_args = list(args)
    none_args[9] = None
    with torch.no_grad():
        a = tlstm.ops.tensorized_lstm_sequence(*full_args)
        b = tlstm.ops.tensorized_lstm_sequence(*none_args)
    assert_results_close(dict(zip("ohc", a)), dict(zip("ohc", b)), TOL[F64])
