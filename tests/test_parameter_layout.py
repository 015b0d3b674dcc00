"""Which parameter does what: the name-to-gate mapping of every named weight, checked one named
weight (or one block of a weight) at a time against implementations written here from the
equations of docs/cells.md, independently of tlstm.

The modules' kernels and the references share the code that gathers the named parameters
(tlstm/peephole_lstm_base.py stacks weight_ci, weight_cf, weight_co; the tLSTM hands its
weight_hh, norm_weight, norm_bias to both), so a mistake there (weight_ci and weight_cf
swapped, say) passes every fused-against-reference comparison. Only a check against
an implementation that reads each named parameter itself finds it.

- Peephole LSTM: gate order i, f, g, o in the stacked matrices; i and f peek at c_{t-1} through
  weight_ci / weight_cf, o at c_t through weight_co; suffixes _l{k} and _reverse.
- tLSTM: weight_hh [G, M, K'], tap k reads row p-c+k of [x~; H], gate blocks i, f, g, o of M
  channels then the K kernel logits; norm_weight / norm_bias rows i, f, g, o, c. The
  independent step is tensorized_helpers.spec_tlstm (one row and one tap at a time).
"""
import math

import pytest
import torch

import tlstm
from helpers import TOL, make_gen, randn, rel_err
from tensorized_helpers import F64, make_inputs, spec_tlstm

PEEPHOLE_MODULES = {"fused": tlstm.PeepholeLSTM, "reference": tlstm.reference.PeepholeLSTM}


# ---- the peephole LSTM, from the equations ----------------------------------------------------


def lstm_from_equations(module, x, h0, c0):
    """docs/cells.md section 1, written from the equations: reads every parameter by its name.
    x [T, B, I] (time-major), h0 [layers*dirs, B, R], c0 [layers*dirs, B, H]."""
    H = module.hidden_size
    dirs = 2 if module.bidirectional else 1
    layer_input = x
    h_n, c_n = [], []
    for layer in range(module.num_layers):
        outs = []
        for d in range(dirs):
            sfx = f"_l{layer}" + ("_reverse" if d else "")

            def p(name):
                return getattr(module, name + sfx, None)

            w_ih, w_hh, b_ih, b_hh, w_hr = (p("weight_ih"), p("weight_hh"), p("bias_ih"),
                                            p("bias_hh"), p("weight_hr"))
            w_ci, w_cf, w_co = p("weight_ci"), p("weight_cf"), p("weight_co")
            k = layer * dirs + d
            h, c = h0[k], c0[k]
            steps = range(x.size(0) - 1, -1, -1) if d else range(x.size(0))
            out = [None] * x.size(0)
            for t in steps:
                a = layer_input[t] @ w_ih.T + h @ w_hh.T
                if b_ih is not None:
                    a = a + b_ih + b_hh
                a_i, a_f, a_g, a_o = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
                i_t = torch.sigmoid(a_i + w_ci * c)  # peeks at c_{t-1}
                f_t = torch.sigmoid(a_f + w_cf * c)  # peeks at c_{t-1}
                g_t = torch.tanh(a_g)
                c = f_t * c + i_t * g_t
                o_t = torch.sigmoid(a_o + w_co * c)  # peeks at c_t
                h = o_t * torch.tanh(c)
                if w_hr is not None:
                    h = h @ w_hr.T
                out[t] = h
            outs.append(torch.stack(out))
            h_n.append(h)
            c_n.append(c)
        layer_input = torch.cat(outs, dim=2)
    return layer_input, torch.stack(h_n), torch.stack(c_n)


PEEPHOLE_KWARGS = dict(input_size=3, hidden_size=5, num_layers=2, bidirectional=True)
PEEPHOLE_NAMES = [f"weight_{g}_l{layer}{sfx}" for layer in (0, 1) for sfx in ("", "_reverse")
                  for g in ("ci", "cf", "co")]


def _peephole_module(cls, only, seed):
    """Random nn.LSTM weights, every peephole vector zero except `only` (random, large enough
    to matter: U(-1.5, 1.5)); `only=None`: every peephole vector random."""
    module = cls(dtype=F64, **PEEPHOLE_KWARGS)
    g = make_gen(seed)
    k = 1.0 / math.sqrt(module.hidden_size)
    with torch.no_grad():
        for name, p in module.named_parameters():
            is_peephole = name.startswith(("weight_ci", "weight_cf", "weight_co"))
            scale = (1.5 if only in (None, name) else 0.0) if is_peephole else k
            p.copy_((torch.rand(p.shape, generator=g, dtype=F64) * 2 - 1) * scale)
    return module


def _outputs_and_grads(run, module, x, h0, c0, seed):
    """Output, h_n, c_n and the gradients of a random linear loss of them with respect to the
    input, the initial state and every parameter, by name."""
    out, h_n, c_n = run(x, h0, c0)
    loss = sum((t * randn(t.shape, seed + k, F64)).sum() for k, t in enumerate((out, h_n, c_n)))
    names = [n for n, _ in module.named_parameters()]
    grads = torch.autograd.grad(loss, [x, h0, c0] + [getattr(module, n) for n in names])
    res = {"output": out, "h_n": h_n, "c_n": c_n}
    res.update(zip(["grad_input", "grad_h0", "grad_c0"] + ["grad_" + n for n in names], grads))
    return {k: v.detach() for k, v in res.items()}


def _leaves(module, T, B, seed):
    dirs = 2 if module.bidirectional else 1
    n = module.num_layers * dirs
    x = randn((T, B, module.input_size), seed).requires_grad_()
    h0 = randn((n, B, module.hidden_size), seed + 1, scale=0.5).requires_grad_()
    c0 = randn((n, B, module.hidden_size), seed + 2, scale=2.0).requires_grad_()
    return x, h0, c0


@pytest.mark.parametrize("impl", list(PEEPHOLE_MODULES))
@pytest.mark.parametrize("only", PEEPHOLE_NAMES + [None],
                         ids=PEEPHOLE_NAMES + ["all_peepholes_random"])
def test_peephole_weight_names_map_to_their_gates(only, impl):
    """One named peephole vector at a time (the others zero), then all of them random: the
    module's outputs, final states and every gradient equal the equations'."""
    module = _peephole_module(PEEPHOLE_MODULES[impl], only, seed=7)
    x, h0, c0 = _leaves(module, T=5, B=3, seed=11)

    def run_module(x, h0, c0):
        out, (h_n, c_n) = module(x, (h0, c0))
        return out, h_n, c_n

    got = _outputs_and_grads(run_module, module, x, h0, c0, seed=21)
    want = _outputs_and_grads(lambda *a: lstm_from_equations(module, *a), module, x, h0, c0,
                              seed=21)
    bad = {k: f"{rel_err(got[k], want[k]):.2e}" for k in want
           if not rel_err(got[k], want[k]) <= TOL[F64]}
    assert not bad, f"{impl}, {only or 'all peepholes'} random: {bad}"
    if only is not None:  # the vector matters: without it the results differ
        with torch.no_grad():
            getattr(module, only).zero_()
            out_without, _ = module(x, (h0, c0))
        assert rel_err(out_without, want["output"]) > 1e-3, "the peephole vector changes nothing"


@pytest.mark.parametrize("impl", list(PEEPHOLE_MODULES))
def test_peephole_with_projection_maps_weight_hr(impl):
    """proj_size > 0: weight_hr_l{k} projects h after the peepholes, also against the equations."""
    kwargs = dict(input_size=3, hidden_size=5, num_layers=2, proj_size=2)
    module = PEEPHOLE_MODULES[impl](dtype=F64, **kwargs)
    g = make_gen(3)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.rand(p.shape, generator=g, dtype=F64) * 2 - 1)
    x = randn((4, 2, 3), 5).requires_grad_()
    h0 = randn((2, 2, 2), 6).requires_grad_()
    c0 = randn((2, 2, 5), 7).requires_grad_()

    def run_module(x, h0, c0):
        out, (h_n, c_n) = module(x, (h0, c0))
        return out, h_n, c_n

    got = _outputs_and_grads(run_module, module, x, h0, c0, seed=8)
    want = _outputs_and_grads(lambda *a: lstm_from_equations(module, *a), module, x, h0, c0,
                              seed=8)
    for key in want:
        assert rel_err(got[key], want[key]) <= TOL[F64], key


# ---- the tLSTM's parameter layout --------------------------------------------------------------

TENSORIZED_MODULES = {"fused": tlstm.TensorizedLSTM, "reference": tlstm.reference.TensorizedLSTM}
M = 3
BLOCKS = ["i", "f", "g", "o", "q"]  # q: the K kernel logits after the four gate blocks


def _tensorized_module(cls, seed, weight_hh_only=None, norm_only=None, **kwargs):
    """Random weight_ih, biases (b^h random in every block), and:
    weight_hh_only=(block, tap): weight_hh zero except that block of rows at that tap (random,
    U(-1.2, 1.2)); norm_only=(name, use): gamma all 1 and beta all 0 except that row (random)."""
    module = cls(input_size=2, hidden_size=M, dtype=F64, **kwargs)
    g = make_gen(seed)
    K = module.kernel_size
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_((torch.rand(p.shape, generator=g, dtype=F64) * 2 - 1) * 1.2)
        if weight_hh_only is not None:
            block, tap = weight_hh_only
            b = BLOCKS.index(block)
            rows = slice(b * M, (b + 1) * M) if block != "q" else slice(4 * M, 4 * M + K)
            keep = module.weight_hh[rows, :, tap].clone()
            module.weight_hh.zero_()
            module.weight_hh[rows, :, tap] = keep
        if norm_only is not None:
            name, use = norm_only
            keep = getattr(module, name)[use].clone()
            module.norm_weight.fill_(1.0)
            module.norm_bias.zero_()
            getattr(module, name)[use] = keep
    return module


def _tensorized_results(module, T=4, B=2, seed=30, use_spec=False):
    x, state = make_inputs(module, T, B, seed, F64)
    if use_spec:
        out, h_n, c_n = spec_tlstm(module, x, *state)
    else:
        out, (h_n, c_n) = module(x, state)
    loss = sum((t * randn(t.shape, seed + 5 + k, F64)).sum()
               for k, t in enumerate((out, h_n, c_n)))
    names = [n for n, _ in module.named_parameters()]
    grads = torch.autograd.grad(loss, [x, *state] + [getattr(module, n) for n in names])
    res = {"output": out, "h_n": h_n, "c_n": c_n}
    res.update(zip(["grad_input", "grad_h0", "grad_c0"] + ["grad_" + n for n in names], grads))
    return {k: v.detach() for k, v in res.items()}


def _assert_impls_match_spec(make, context, matters=None):
    """The fused module and the reference, built by make(cls) with the same weights, against
    the independent step: outputs, final states and every gradient. matters(module): changes the
    tested block back to neutral, after which the final state must differ (the block is used)."""
    want = None
    for impl, cls in TENSORIZED_MODULES.items():
        module = make(cls)
        if want is None:
            want = _tensorized_results(module, use_spec=True)
        got = _tensorized_results(module)
        bad = {k: f"{rel_err(got[k], want[k]):.2e}" for k in want
               if not rel_err(got[k], want[k]) <= TOL[F64]}
        assert not bad, f"{impl}, {context}: {bad}"
    if matters is not None:
        with torch.no_grad():
            matters(module)
        assert rel_err(_tensorized_results(module)["h_n"], want["h_n"]) > 1e-4, \
            f"{context} changes nothing"


WEIGHT_HH_CASES = [(block, tap) for block in BLOCKS for tap in range(3)]


@pytest.mark.parametrize("block,tap", WEIGHT_HH_CASES,
                         ids=[f"{b}-tap{k}" for b, k in WEIGHT_HH_CASES])
def test_tensorized_weight_hh_blocks_and_taps(block, tap):
    """weight_hh zero except one gate block at one tap (K=3, depth 3: rows 1..3 each read rows
    p-1, p, p+1 of [x~; H]): both modules equal the independent step, values and gradients."""
    _assert_impls_match_spec(
        lambda cls: _tensorized_module(cls, 1, weight_hh_only=(block, tap), depth=3),
        f"weight_hh block {block} tap {tap}", matters=lambda m: m.weight_hh.zero_())


NO_FEEDBACK_CASES = [(block, tap) for block in BLOCKS for tap in range(2)]


@pytest.mark.parametrize("block,tap", NO_FEEDBACK_CASES,
                         ids=[f"{b}-tap{k}" for b, k in NO_FEEDBACK_CASES])
def test_tensorized_weight_hh_taps_without_feedback(block, tap):
    """feedback=False: K' = c + 1 taps, tap k still reads row p-c+k (rows p-1 and p for K=3)."""
    _assert_impls_match_spec(
        lambda cls: _tensorized_module(cls, 2, weight_hh_only=(block, tap), depth=3,
                                       feedback=False),
        f"feedback=False block {block} tap {tap}", matters=lambda m: m.weight_hh.zero_())


NORM_CASES = [(name, use) for name in ("norm_weight", "norm_bias") for use in range(5)]


@pytest.mark.parametrize("name,use", NORM_CASES,
                         ids=[f"{n}-{'ifgoc'[u]}" for n, u in NORM_CASES])
def test_tensorized_norm_rows(name, use):
    """norm_weight / norm_bias: identity (1, 0) except one row (i, f, g, o, c), random: both
    modules equal the independent step, values and gradients; and the row matters."""
    neutral = 1.0 if name == "norm_weight" else 0.0
    _assert_impls_match_spec(
        lambda cls: _tensorized_module(cls, 3, norm_only=(name, use), depth=2),
        f"{name} row {'ifgoc'[use]}",
        matters=lambda m: getattr(m, name)[use].fill_(neutral))


@pytest.mark.parametrize("block", BLOCKS)
def test_tensorized_bias_hh_blocks(block):
    """bias_hh zero except one block (i, f, g, o of M channels, then the K logits)."""
    b = BLOCKS.index(block)
    rows = slice(b * M, (b + 1) * M) if block != "q" else slice(4 * M, 4 * M + 3)

    def make(cls):
        module = _tensorized_module(cls, 4, depth=2)
        with torch.no_grad():
            keep = module.bias_hh[rows].clone() * 2
            module.bias_hh.zero_()
            module.bias_hh[rows] = keep
        return module

    _assert_impls_match_spec(make, f"bias_hh block {block}",
                             matters=lambda m: m.bias_hh[rows].zero_())
