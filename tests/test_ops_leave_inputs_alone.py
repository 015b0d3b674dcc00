"""The ops never write into their arguments: every input, state and parameter tensor is bitwise
the same after the forward and the backward op, in the shapes where a transposed or expanded
view of an argument already counts as contiguous (a batch of one, one row, one step), which is
where a kernel that writes into `x.contiguous()` would write into x itself."""
import itertools

import pytest
import torch

import tlstm


def _snapshot(tensors):
    return [None if t is None else t.detach().clone() for t in tensors]


def _assert_unchanged(tensors, before, names):
    for name, t, b in zip(names, tensors, before):
        if t is not None:
            assert torch.equal(t, b), f"the op wrote into its argument {name}"


def _check_arguments_untouched(module, x, state, **kwargs):
    """Runs module(x, state, **kwargs) forward and backward, checking after each that x, the
    state, every parameter and the upstream gradients are bitwise as they were."""
    args = [x, *state, *module.parameters()]
    names = ["input", "h0", "c0"] + [n for n, _ in module.named_parameters()]
    before = _snapshot(args)
    out, (h, c) = module(x, state, **kwargs)
    _assert_unchanged(args, before, names)
    upstream = [torch.randn_like(t) for t in (out, h, c)]
    grads_before = _snapshot(upstream)
    torch.autograd.backward([out, h, c], upstream)
    _assert_unchanged(args, before, names)
    _assert_unchanged(upstream, grads_before, ["grad_output", "grad_h_n", "grad_c_n"])


def _random_parameters(module):
    for p in module.parameters():  # biases and norm gains away from their zero/one defaults
        p.data.uniform_(-0.5, 0.5)
    return module


def _leaf(*shape):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=True)


SHAPES = list(itertools.product([1, 2], [1, 3], [1, 2], [False, True]))  # T, depth, B, flush


@pytest.mark.parametrize("T, depth, B, flush", SHAPES)
def test_tensorized_ops_leave_their_arguments_alone(T, depth, B, flush):
    torch.manual_seed(T * 100 + depth * 10 + B)
    module = _random_parameters(tlstm.TensorizedLSTM(3, 4, depth=depth, dtype=torch.float64))
    state = (_leaf(B, module.rows, 4), _leaf(B, module.rows, 4))
    _check_arguments_untouched(module, _leaf(T, B, 3), state, flush=flush)


@pytest.mark.parametrize("T, B", [(1, 1), (2, 1), (1, 3)])
def test_peephole_ops_leave_their_arguments_alone(T, B):
    torch.manual_seed(T * 10 + B)
    module = _random_parameters(tlstm.PeepholeLSTM(3, 4, dtype=torch.float64))
    _check_arguments_untouched(module, _leaf(T, B, 3), (_leaf(1, B, 4), _leaf(1, B, 4)))
