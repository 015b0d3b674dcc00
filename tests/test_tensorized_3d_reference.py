"""The 3-D tensorized LSTM (tensor_dim=3, docs/cells.md section 7), its properties held by the
reference module and the fused one alike: the state is a P x P plane of locations, the input
enters at corner (0, 0) and the output leaves at (P, P). Both against an implementation written
here one location and one tap at a time (with streaming, lengths and the returned state); the
delay (y_t sees x_t, never x_{t+1}); chunks with the state passed on equal the whole; depth 1
with K=3 is nn.LSTM on x~ through taps (0, 0) and (1, 1). Also the reference's gradcheck and
shapes. The fused module against the reference: test_tensorized_3d_vs_reference.py."""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import tlstm
from helpers import TOL, assert_results_close, cuda_recurrences, rel_err
from tensorized_helpers import F64, config_id, make_inputs, make_tlstm, results_and_gradients

Reference = tlstm.reference.TensorizedLSTM
Fused = tlstm.TensorizedLSTM
# The reference checked to 1e-12 against the transcription (the same sums, another order); the
# fused kernels to the float64 bound of the contract.
TRANSCRIPTION_TOL = {Reference: 1e-12, Fused: TOL[F64]}
MODULES = [pytest.param(Reference, id="reference"), pytest.param(Fused, id="fused")]


def modules_on_devices():
    """Params of ("cls", "device") (indirect=["device"]): the reference and the fused module on
    the CPU, and the fused module on CUDA with each recurrence."""
    return ([pytest.param(Reference, "cpu", id="reference"),
             pytest.param(Fused, "cpu", id="fused-cpu")]
            + [pytest.param(Fused, p.values[0], id=f"fused-{p.values[0]}", marks=p.marks)
               for p in cuda_recurrences()])


def spec_tlstm3d(module, x, h0, c0, lengths=None, flush=True):
    """docs/cells.md section 7 transcribed: one sequence, step, location and tap at a time.
    x [T, B, I]; h0, c0 [B, P, P, M]; returns outputs [T, B, M or proj_size], H_n, C_n."""
    p = dict(module.named_parameters())
    w_ih, b_ih, w_hh, b_hh = p["weight_ih"], p.get("bias_ih"), p["weight_hh"], p.get("bias_hh")
    gamma, beta, w_proj = p.get("norm_weight"), p.get("norm_bias"), p.get("weight_proj")
    T, B, _ = x.shape
    M, K, L = module.hidden_size, module.kernel_size, module.depth
    c = (K - 1) // 2
    P = (L - 1) * c + 1
    taps = K if module.feedback else c + 1
    assert w_hh.shape[2:] == (taps, taps) and module.rows == P
    delay = L - 1 if flush else 0
    locations = [(i, j) for i in range(1, P + 1) for j in range(1, P + 1)]

    def cn(z, use):
        if gamma is None:
            return z
        mean = z.sum() / M
        var = ((z - mean) ** 2).sum() / M
        return (z - mean) / torch.sqrt(var + 1e-5) * gamma[use] + beta[use]

    def clamp(r):
        return min(max(r, 1), P)

    outputs, h_n, c_n = [[None] * B for _ in range(T)], [], []
    for b in range(B):
        Tb = T if lengths is None else int(lengths[b])
        H = {loc: h0[b, loc[0] - 1, loc[1] - 1] for loc in locations}
        C = {loc: c0[b, loc[0] - 1, loc[1] - 1] for loc in locations}
        H_n, C_n, tops = H, C, []
        for s in range(Tb + delay):
            x_t = w_ih @ (x[s, b] if s < Tb else torch.zeros_like(x[0, b]))
            if b_ih is not None:
                x_t = x_t + b_ih
            H_new, C_new = {}, {}
            for (p1, p2) in locations:
                A = b_hh.clone() if b_hh is not None else x.new_zeros(w_hh.shape[0])
                for k1 in range(taps):
                    for k2 in range(taps):
                        r1, r2 = p1 - c + k1, p2 - c + k2
                        if (r1, r2) == (0, 0):
                            A = A + w_hh[:, :, k1, k2] @ x_t
                        elif 1 <= r1 <= P and 1 <= r2 <= P:
                            A = A + w_hh[:, :, k1, k2] @ H[(r1, r2)]
                i_g, f_g = torch.sigmoid(cn(A[:M], 0)), torch.sigmoid(cn(A[M:2 * M], 1))
                g_g, o_g = torch.tanh(cn(A[2 * M:3 * M], 2)), torch.sigmoid(cn(A[3 * M:4 * M], 3))
                if module.memory_conv:
                    q = torch.softmax(A[4 * M:], dim=0)
                    c_conv = sum(q[k1 * K + k2] * C[(clamp(p1 - c + k1), clamp(p2 - c + k2))]
                                 for k1 in range(K) for k2 in range(K))
                else:
                    c_conv = C[(p1, p2)]
                C_new[(p1, p2)] = g_g * i_g + c_conv * f_g
                H_new[(p1, p2)] = torch.tanh(cn(C_new[(p1, p2)], 4)) * o_g
            H, C = H_new, C_new
            if s + 1 == Tb:
                H_n, C_n = H, C
            tops.append(H[(P, P)])
        for t in range(T):
            y = tops[t + delay] if t < Tb else x.new_zeros(M)
            outputs[t][b] = w_proj @ y if w_proj is not None else y
        h_n.append(torch.stack([torch.stack([H_n[(i, j)] for j in range(1, P + 1)])
                                for i in range(1, P + 1)]))
        c_n.append(torch.stack([torch.stack([C_n[(i, j)] for j in range(1, P + 1)])
                                for i in range(1, P + 1)]))
    return torch.stack([torch.stack(row) for row in outputs]), torch.stack(h_n), torch.stack(c_n)


CONFIGS = [
    dict(depth=1),
    dict(depth=2),
    dict(depth=3),
    dict(depth=2, kernel_size=5),
    dict(depth=3, feedback=False),
    dict(depth=2, memory_conv=False, channel_norm=False, bias=False),
    dict(depth=2, proj_size=2),
]


@pytest.mark.parametrize("lengths,flush", [(None, True), (None, False), ([4, 2], True)],
                         ids=["flush", "stream", "lengths"])
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
@pytest.mark.parametrize("cls", MODULES)
def test_module_equals_the_transcription(cls, config, lengths, flush):
    module = make_tlstm(cls, F64, seed=90, input_size=3, hidden_size=3, tensor_dim=3, **config)
    x, state = make_inputs(module, 4, 2, seed=91)
    lens = torch.tensor(lengths) if lengths is not None else None
    if lens is None:
        out, (h_n, c_n) = module(x, state, flush=flush)
    else:
        out, (h_n, c_n) = module(pack_padded_sequence(x, lens), state, flush=flush)
        out = pad_packed_sequence(out, total_length=4)[0]
    got = results_and_gradients(module, x, state, out, h_n, c_n, seed=92)
    want = results_and_gradients(module, x, state, *spec_tlstm3d(module, x, *state, lens, flush),
                                 seed=92)
    assert_results_close(got, want, TRANSCRIPTION_TOL[cls],
                         context=f"3-D {cls.__module__} {config} {lengths} flush={flush}")


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("cls", MODULES)
def test_depth1_k3_is_nn_lstm_on_the_projected_input(cls, bias):
    """P = 1: location (1, 1) reads x~ through tap (0, 0) and itself through tap (1, 1); every
    other tap reads zeros. Without channel norm and the memory convolution that is nn.LSTM."""
    torch.manual_seed(93)
    module = cls(3, 4, depth=1, tensor_dim=3, channel_norm=False, memory_conv=False, bias=bias,
                 dtype=F64)
    lstm = nn.LSTM(4, 4, bias=bias, dtype=F64)
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(module.weight_hh[:, :, 0, 0])
        lstm.weight_hh_l0.copy_(module.weight_hh[:, :, 1, 1])
        if bias:
            lstm.bias_ih_l0.copy_(module.bias_hh)
            lstm.bias_hh_l0.zero_()
    x = torch.randn(6, 2, 3, dtype=F64)
    h0, c0 = torch.randn(2, 1, 1, 4, dtype=F64), torch.randn(2, 1, 1, 4, dtype=F64)
    with torch.no_grad():
        y, (h, c) = module(x, (h0, c0))
        x_tilde = nn.functional.linear(x, module.weight_ih, module.bias_ih)
        want, (h_w, c_w) = lstm(x_tilde, (h0.view(1, 2, 4), c0.view(1, 2, 4)))
    assert rel_err(y, want) <= TOL[F64]
    assert rel_err(h.view(1, 2, 4), h_w) <= TOL[F64] and rel_err(c.view(1, 2, 4), c_w) <= TOL[F64]


@pytest.mark.parametrize("config", [dict(depth=2), dict(depth=3), dict(depth=4),
                                    dict(depth=2, kernel_size=5), dict(depth=3, feedback=False)],
                         ids=config_id)
@pytest.mark.parametrize("cls,device", modules_on_devices(), indirect=["device"])
def test_output_sees_its_input_and_never_a_later_one(cls, device, config):
    module = make_tlstm(cls, F64, seed=94, input_size=2, hidden_size=3, tensor_dim=3,
                        device=device, **config)
    T = 6
    x = torch.randn(T, 1, 2, dtype=F64, device=device, requires_grad=True)
    out, _ = module(x)
    for t in range(T):
        (g,) = torch.autograd.grad(out[t].sum(), x, retain_graph=True)
        norms = g.norm(dim=(1, 2))
        assert norms[t] > 1e-8, f"y_{t} does not see x_{t}"
        assert torch.all(norms[t + 1:] == 0), f"y_{t} sees a later input"


@pytest.mark.parametrize("flush", [True, False])
@pytest.mark.parametrize("cls,device", modules_on_devices(), indirect=["device"])
def test_chunks_with_the_state_passed_on_equal_the_whole(cls, device, flush):
    module = make_tlstm(cls, F64, seed=95, input_size=3, hidden_size=8, depth=3, tensor_dim=3,
                        device=device)
    x, state = make_inputs(module, 7, 2, seed=96)
    out, (h_n, c_n) = module(x, state, flush=flush)
    whole = results_and_gradients(module, x, state, out, h_n, c_n, seed=97)
    outs, st = [], state
    for chunk in torch.split(x, [3, 1, 3]):
        y, st = module(chunk, st, flush=flush)
        outs.append(y)
    chunked = results_and_gradients(module, x, state, torch.cat(outs), *st, seed=97)
    assert_results_close(chunked, whole, 1e-12, context=f"3-D {cls.__module__} chunks, {flush}")


def test_gradcheck():
    module = make_tlstm(Reference, F64, seed=98, input_size=2, hidden_size=2, depth=2,
                        tensor_dim=3)
    x, state = make_inputs(module, 3, 1, seed=99)
    params = list(module.parameters())

    def f(x, h0, c0, *weights):
        with torch.no_grad():
            for p, w in zip(params, weights):
                p.copy_(w)
        out, (h, c) = torch.func.functional_call(
            module, dict(zip([n for n, _ in module.named_parameters()], weights)), (x, (h0, c0)))
        return out, h, c

    weights = [p.detach().clone().requires_grad_() for p in params]
    assert torch.autograd.gradcheck(f, (x, *state, *weights), fast_mode=True)


def test_parameters_and_state_shapes():
    M, K = 4, 3
    counts = set()
    for depth in (1, 2, 4):
        module = Reference(3, M, depth=depth, tensor_dim=3)
        assert module.weight_hh.shape == (4 * M + K * K, M, K, K)
        assert module.state_shape == (module.rows, module.rows, M)
        counts.add(sum(p.numel() for p in module.parameters()))
    assert len(counts) == 1  # the parameter count does not depend on the depth
    module = Reference(3, M, depth=2, tensor_dim=3, feedback=False, memory_conv=False)
    assert module.weight_hh.shape == (4 * M, M, 2, 2)
    x = torch.randn(5, 2, 3)
    with pytest.raises(RuntimeError, match=r"= \(B, P, P, M\), got \[2, 2, 4\]"):
        module(x, (torch.zeros(2, 2, 4), torch.zeros(2, 2, 4)))
    y, (h, c) = module(x[:, 0])  # unbatched
    assert y.shape == (5, M) and h.shape == (2, 2, M)
    with pytest.raises(ValueError, match="tensor_dim must be 2"):
        Reference(3, M, depth=2, tensor_dim=4)

