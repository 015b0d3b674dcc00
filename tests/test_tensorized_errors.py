"""Bad constructor arguments and bad inputs of TensorizedLSTM (fused and reference): the error
types and the key parts of the messages promised by the API. With a GPU also tensors on two
devices, for the module and for the backward op called directly."""
import re

import pytest
import torch

import tlstm
from helpers import cuda_param, pack
from tensorized_helpers import F32, backward_op_args, fused_and_reference, make_inputs, op_args

MODULES = {"fused": tlstm.TensorizedLSTM, "reference": tlstm.reference.TensorizedLSTM}


@pytest.fixture(params=list(MODULES))
def cls(request):
    return MODULES[request.param]


# ---- constructor --------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel_size", [4, 2, 1, 0, -3, 3.0, "3", True])
def test_bad_kernel_size(cls, kernel_size):
    with pytest.raises(ValueError, match=re.escape(
            f"kernel_size must be an odd integer >= 3, got {kernel_size!r}")):
        cls(4, 5, 2, kernel_size=kernel_size)


def test_kernel_size_message_example(cls):
    with pytest.raises(ValueError, match=r"kernel_size must be an odd integer >= 3, got 4"):
        cls(4, 5, 2, kernel_size=4)


@pytest.mark.parametrize("depth", [0, -1, 2.0, None])
def test_bad_depth(cls, depth):
    with pytest.raises(ValueError,
                       match=re.escape(f"depth must be an integer >= 1, got {depth!r}")):
        cls(4, 5, depth)


def test_depth_message_example(cls):
    with pytest.raises(ValueError, match=r"depth must be an integer >= 1, got 0"):
        cls(4, 5, 0)


@pytest.mark.parametrize("name", ["input_size", "hidden_size"])
@pytest.mark.parametrize("value", [0, -2])
def test_sizes_must_be_positive(cls, name, value):
    kwargs = dict(input_size=4, hidden_size=5, depth=2)
    kwargs[name] = value
    with pytest.raises(ValueError, match=name):
        cls(**kwargs)


@pytest.mark.parametrize("name", ["input_size", "hidden_size"])
@pytest.mark.parametrize("value", [4.0, "4", None, True])
def test_sizes_must_be_int(cls, name, value):
    kwargs = dict(input_size=4, hidden_size=5, depth=2)
    kwargs[name] = value
    with pytest.raises(TypeError, match=name):
        cls(**kwargs)


def test_good_kernel_sizes_and_depths(cls):
    for K in (3, 5, 7):
        for depth in (1, 2, 3):
            m = cls(2, 3, depth, kernel_size=K)
            assert m.rows == (depth - 1) * (K - 1) // 2 + 1


# ---- forward ---------------------------------------------------------------------------------


@pytest.fixture
def module(cls):
    return cls(4, 5, 3)  # P = 3


def test_wrong_input_size(module):
    with pytest.raises(RuntimeError,
                       match=r"input\.size\(-1\) must be equal to input_size\. Expected 4, got 7"):
        module(torch.randn(3, 2, 7))
    with pytest.raises(RuntimeError, match=r"Expected 4, got 7"):
        module(torch.randn(3, 7))  # unbatched
    with pytest.raises(RuntimeError, match=r"Expected 4, got 7"):
        module(pack(torch.randn(3, 2, 7), [3, 1], False))


@pytest.mark.parametrize("shape", [(2, 3, 2, 4), (4,), (1, 1, 1, 1, 4)])
def test_wrong_input_dims(module, shape):
    with pytest.raises(ValueError, match=re.escape(
            f"TensorizedLSTM: Expected input to be 2D or 3D, got {len(shape)}D instead")):
        module(torch.randn(shape))


@pytest.mark.parametrize("which", [0, 1])
def test_wrong_state_shape(module, which):
    good = torch.zeros(2, 3, 5)
    bad = torch.zeros(2, 4, 5)
    state = [good, good.clone()]
    state[which] = bad
    with pytest.raises(RuntimeError, match=re.escape(
            f"Expected state[{which}] size (2, 3, 5) = (B, P, M), got [2, 4, 5]")):
        module(torch.randn(3, 2, 4), tuple(state))


def test_wrong_state_batch_and_unbatched_state(module):
    with pytest.raises(RuntimeError, match=r"Expected state\[0\] size \(2, 3, 5\)"):
        module(torch.randn(3, 2, 4), (torch.zeros(1, 3, 5), torch.zeros(1, 3, 5)))
    # unbatched input takes a [P, M] state
    with pytest.raises(RuntimeError, match=r"Expected state\[0\] size \(1, 3, 5\)"):
        module(torch.randn(3, 4), (torch.zeros(4, 5), torch.zeros(4, 5)))
    # a packed input's state has the batch size of the packed batch
    with pytest.raises(RuntimeError, match=r"Expected state\[1\] size \(2, 3, 5\)"):
        module(pack(torch.randn(3, 2, 4), [3, 1], False),
               (torch.zeros(2, 3, 5), torch.zeros(3, 3, 5)))


def test_input_dtype_mismatch(module):
    with pytest.raises(ValueError, match=re.escape(
            "TensorizedLSTM input dtype (torch.float64) does not match weight dtype "
            "(torch.float32)")):
        module(torch.randn(3, 2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"input dtype \(torch\.float64\)"):
        module(pack(torch.randn(3, 2, 4, dtype=torch.float64), [3, 1], False))


@pytest.mark.parametrize("which", [0, 1])
def test_state_dtype_mismatch(module, which):
    state = [torch.zeros(2, 3, 5), torch.zeros(2, 3, 5)]
    state[which] = state[which].double()
    with pytest.raises(RuntimeError) as exc:
        module(torch.randn(3, 2, 4), tuple(state))
    msg = str(exc.value)
    assert "state" in msg and "torch.float32" in msg and "torch.float64" in msg, msg


def test_parameters_on_another_device(module):
    x = torch.empty(3, 2, 4, device="meta")
    with pytest.raises(RuntimeError, match=re.escape(
            "Input and parameter tensors are not at the same device, found input tensor at meta "
            "and parameter tensor at cpu")):
        module(x)


def test_state_on_another_device(module):
    meta = torch.empty(2, 3, 5, device="meta")
    with pytest.raises(RuntimeError, match=re.escape(
            "Input and state tensors are not at the same device, found input tensor at cpu and "
            "state tensor at meta")):
        module(torch.randn(3, 2, 4), (meta, meta))
    with pytest.raises(RuntimeError, match=r"Input and state tensors are not at the same device"):
        module(torch.randn(3, 2, 4), (torch.zeros(2, 3, 5), meta))


@pytest.mark.parametrize("shape", [(0, 2, 4), (0, 4)])
def test_empty_sequence(module, shape):
    with pytest.raises(RuntimeError, match=r"Expected sequence length to be larger than 0 in RNN"):
        module(torch.randn(shape))


def test_empty_sequence_batch_first(cls):
    m = cls(4, 5, 2, batch_first=True)
    with pytest.raises(RuntimeError, match=r"Expected sequence length to be larger than 0"):
        m(torch.randn(2, 0, 4))


@pytest.mark.parametrize("count", [1, 3])
def test_state_must_be_a_pair(module, count):
    P = module.rows
    with pytest.raises(TypeError) as exc:
        module(torch.randn(3, 2, 4), torch.zeros(2, P, 5))
    assert str(exc.value) == (
        f"state must be a tuple (H, C) of two tensors, got a single tensor of shape [2, {P}, 5]"
    )
    with pytest.raises(TypeError) as exc:
        module(torch.randn(3, 2, 4), (torch.zeros(2, P, 5),) * count)
    assert str(exc.value) == f"state must be a tuple (H, C) of two tensors, got {count}"


# ---- tensors on two devices (CUDA only) -------------------------------------------------------

ON_CUDA = pytest.mark.parametrize("device", [cuda_param()], indirect=True)


@ON_CUDA
def test_state_on_the_cpu_is_refused(device):
    fused, _ = fused_and_reference(F32, seed=31, input_size=3, hidden_size=5, depth=3)
    fused = fused.to(device)
    x = torch.randn(4, 2, 3, device=device)
    zeros = torch.zeros(2, fused.rows, 5)
    with pytest.raises(RuntimeError, match="Input and state tensors are not at the same device"):
        fused(x, (zeros, zeros))
    with pytest.raises(RuntimeError,
                       match="Input and parameter tensors are not at the same device"):
        fused.to("cpu")(x)


@ON_CUDA
@pytest.mark.parametrize("name", ["norm_weight", "q", "norm_hat", "cells"])
def test_backward_op_refuses_a_buffer_on_the_cpu(name, device):
    """The backward op, called directly, names a parameter or saved buffer that is not on the
    input's device instead of reading host memory from a kernel."""
    fused, _ = fused_and_reference(F32, seed=32, input_size=3, hidden_size=5, depth=3)
    fused = fused.to(device)
    x, (h0, c0) = make_inputs(fused, 4, 2, 33)
    with torch.no_grad():
        args = op_args(fused, x, h0, c0)
        outs = torch.ops.tlstm.tensorized_lstm_forward(*args, True)
        bargs = backward_op_args(args, outs, [torch.ones_like(t) for t in outs[:3]],
                                 **{name: lambda t: t.cpu()})
        with pytest.raises(RuntimeError, match=f"expected {name} on device cuda:0 .*got cpu"):
            torch.ops.tlstm.tensorized_lstm_backward(*bargs)
