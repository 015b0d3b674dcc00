"""The tLSTM's returned state carries over as nn.LSTM's does: it is the state after step T (after
step T_b per sequence with lengths), the last step that reads an input, with or without flush.

So feeding a sequence in chunks with the default flush=True, passing the returned state on,
gives exactly the outputs, final state and every gradient of feeding it whole: the flush steps
produce the last depth - 1 outputs of a chunk but do not advance the state, and since y_t never
depends on x_{t+1} their zero inputs change no output. Each property is checked on the fused
module and on the reference, in float64 and float32."""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import tlstm
from helpers import TOL, assert_results_close, rel_err
from tensorized_helpers import (F32, F64, config_id, make_inputs, make_tlstm,
                                results_and_gradients)

MODULES = {"fused": tlstm.TensorizedLSTM, "reference": tlstm.reference.TensorizedLSTM}

CONFIGS = [
    dict(depth=1),
    dict(depth=3),
    dict(depth=4, kernel_size=5),
    dict(depth=3, feedback=False),
    dict(depth=3, channel_norm=False, memory_conv=False),
    dict(depth=2, bias=False, proj_size=2),
    dict(depth=3, batch_first=True),
]


@pytest.fixture(params=list(MODULES))
def cls(request):
    return MODULES[request.param]


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_flushed_chunks_with_state_passed_on_equal_whole_sequence(cls, config, dtype):
    T, B = 9, 3
    module = make_tlstm(cls, dtype, seed=71, input_size=3, hidden_size=5, **config)
    x, state = make_inputs(module, T, B, seed=72)
    tdim = 1 if module.batch_first else 0

    out, (h_n, c_n) = module(x, state)  # flush=True, the default
    whole = results_and_gradients(module, x, state, out, h_n, c_n, seed=73)

    outs, st = [], state
    for chunk in torch.split(x, [4, 1, 4], dim=tdim):
        out, st = module(chunk, st)
        outs.append(out)
    chunked = results_and_gradients(module, x, state, torch.cat(outs, dim=tdim), *st, seed=73)
    # the same computation grouped differently: only rounding may differ
    tol = 1e-12 if dtype == F64 else 1e-5
    assert_results_close(chunked, whole, tol, context=f"flushed chunks vs whole {config}")


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_returned_state_is_the_state_after_the_last_input(cls, config):
    """flush=True and flush=False return the same state, and so does a run on x[:T] whatever
    follows it: the state after step T is the state after the last input."""
    T, B = 6, 2
    module = make_tlstm(cls, F64, seed=74, input_size=3, hidden_size=4, **config)
    x, state = make_inputs(module, T, B, seed=75)
    tdim = 1 if module.batch_first else 0
    with torch.no_grad():
        _, flushed = module(x, state, flush=True)
        _, streamed = module(x, state, flush=False)
        _, longer = module(torch.cat([x, x.narrow(tdim, 0, 2)], dim=tdim), state, flush=False)
    assert_results_close(dict(zip("hc", flushed)), dict(zip("hc", streamed)), TOL[F64])
    if module.depth > 1:  # the later inputs move the state: the comparison can fail
        assert rel_err(longer[0], streamed[0]) > 1e-3


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("depth", [1, 3])
def test_flushed_chunks_with_lengths_equal_whole_sequence(cls, depth, dtype):
    """Packed sequences of lengths 9, 6, 5 fed whole, and fed as a first chunk of 4 steps and a
    packed second chunk of the rest with the returned state: the same outputs, final states
    (each after its own last input) and gradients."""
    T, B, split = 9, 3, 4
    lengths = torch.tensor([9, 6, 5])
    module = make_tlstm(cls, dtype, seed=76, input_size=3, hidden_size=5, depth=depth)
    x, state = make_inputs(module, T, B, seed=77)

    def padded(out):
        return pad_packed_sequence(out, total_length=None)[0]

    out, (h_n, c_n) = module(pack_padded_sequence(x, lengths), state)
    whole = results_and_gradients(module, x, state, padded(out), h_n, c_n, seed=78)

    first, st = module(x[:split], state)
    rest, (h2, c2) = module(pack_padded_sequence(x[split:], lengths - split), st)
    out = torch.cat([first, padded(rest)])
    chunked = results_and_gradients(module, x, state, out, h2, c2, seed=78)
    tol = 1e-12 if dtype == F64 else 1e-5
    assert_results_close(chunked, whole, tol, context=f"depth {depth}, lengths {lengths}")


def test_zero_length_sequence_returns_its_initial_state():
    """The op with a length of 0: nothing is read, the returned state is the initial one (and
    the gradient reaching it is dL/dH_n, dL/dC_n themselves)."""
    module = make_tlstm(tlstm.TensorizedLSTM, F64, seed=79, input_size=3, hidden_size=4,
                        depth=3)
    x, (h0, c0) = make_inputs(module, 4, 2, seed=80)
    p = dict(module.named_parameters())
    args = (p["weight_ih"], p["bias_ih"], p["weight_hh"], p["bias_hh"], p["norm_weight"],
            p["norm_bias"], torch.tensor([4, 0]), module.depth, 3, True, True)
    for flush in (True, False):
        out, h_n, c_n = tlstm.ops.tensorized_lstm_sequence(x, h0, c0, *args, flush)
        assert torch.equal(h_n[1], h0[1].detach()) and torch.equal(c_n[1], c0[1].detach())
        assert torch.all(out[:, 1] == 0)
        gh, gc = torch.randn_like(h_n), torch.randn_like(c_n)
        g_h0, g_c0 = torch.autograd.grad((h_n * gh).sum() + (c_n * gc).sum(), [h0, c0])
        assert torch.equal(g_h0[1], gh[1]) and torch.equal(g_c0[1], gc[1])


def test_hx_keyword_is_the_state(cls):
    """nn.LSTM users pass the state as hx=; it is the same argument as state (and not both)."""
    module = make_tlstm(cls, F64, seed=81, input_size=3, hidden_size=4, depth=2)
    x, state = make_inputs(module, 5, 2, seed=82)
    with torch.no_grad():
        by_name = module(x, hx=state)
        by_position = module(x, state)
        without = module(x)
    assert_results_close({"y": by_name[0], "h": by_name[1][0], "c": by_name[1][1]},
                         {"y": by_position[0], "h": by_position[1][0], "c": by_position[1][1]},
                         0.0)
    assert rel_err(by_name[0], without[0]) > 1e-3  # the state was used
    with pytest.raises(TypeError, match="either state or hx"):
        module(x, state, hx=state)


@pytest.mark.parametrize("flush", ["no", 0, None])
def test_flush_must_be_a_bool(cls, flush):
    module = make_tlstm(cls, F64, seed=83, input_size=3, hidden_size=4, depth=2)
    x, _ = make_inputs(module, 3, 2, seed=84, with_state=False)
    expected = f"flush should be of type bool, got: {type(flush).__name__}"
    with pytest.raises(TypeError, match=expected):
        module(x, flush=flush)
