"""Python entry points of the registered ``torch.ops.tlstm`` ops.

Each op is a C++ / CUDA kernel chosen by the dispatcher (csrc/). This file gives each op its
shape function (for FakeTensor, ``torch.compile`` and ``torch.export``) and its autograd formula,
which calls the op's own backward op. Dimension letters follow csrc/dimensions.h.
"""
from __future__ import annotations

import math

import torch

from . import _C  # noqa: F401  (loads the library that defines torch.ops.tlstm)

_HALF_TYPES = (torch.float16, torch.bfloat16)


def op_math_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the cell state and of accumulations for inputs of ``dtype``."""
    return torch.float32 if dtype in _HALF_TYPES else dtype


def has_cuda_kernels() -> bool:
    """Whether this build of tlstm._C has the CUDA kernels (compiled with nvcc)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("tlstm::peephole_lstm_forward", "CUDA")


def _needs_saving(*tensors) -> bool:
    """Whether the forward op saves what its backward needs. A trace (torch.jit.trace) records
    this as a constant of its graph, which must then serve both grad modes, as nn.LSTM's trace
    does: there it follows requires_grad alone."""
    wanted = any(t is not None and t.requires_grad for t in tensors)
    return wanted and (torch.is_grad_enabled() or torch.jit.is_tracing())


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast runs nn.LSTM in on ``device_type``, or None outside autocast."""
    if device_type in ("cuda", "cpu") and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def _to_kernel_dtype(tensors: tuple) -> tuple[tuple, torch.dtype | None]:
    """What nn.LSTM does with dtypes around its kernels, for the ops' floating tensors (the
    first is the input). Under autocast, float16, bfloat16 and float32 tensors are cast to the
    autocast dtype, as autocast casts nn.LSTM's (float64 is left alone). The CPU kernels run the
    half types in float32: the tensors are widened, and the results are to be narrowed back to
    the returned dtype (None: leave them as they are). Autograd records every cast."""
    input = tensors[0]
    dtype = input.dtype
    target = _autocast_dtype(input.device.type)
    if target is not None and dtype != torch.float64:
        dtype = target
        tensors = tuple(t.to(target) if t is not None and t.is_floating_point()
                        and t.dtype != torch.float64 else t for t in tensors)
    if input.device.type != "cpu" or dtype not in _HALF_TYPES:
        return tensors, None
    return tuple(t.float() if t is not None and t.dtype in _HALF_TYPES else t
                 for t in tensors), dtype


def _narrow(results: tuple, dtype: torch.dtype | None) -> tuple:
    return results if dtype is None else tuple(t.to(dtype) for t in results)


def _double_backward_error(cell: str) -> RuntimeError:
    return RuntimeError(
        f"tlstm.{cell} does not support double backward: the gradients its kernels compute "
        "are not themselves differentiable (a gradient penalty, torch.autograd.grad(..., "
        "create_graph=True) followed by another backward, or nested torch.func.grad, needs "
        f"that). cuDNN's nn.LSTM has the same limit; tlstm.reference.{cell}, the step-by-step "
        "PyTorch loop with the same parameters, supports it."
    )


def _double_backward_unsupported(cell: str):
    def backward(ctx, *grads):
        raise _double_backward_error(cell)

    return backward


def _functorch_transforms() -> list:
    """The torch.func transforms (TransformType), outermost first, that the current call runs
    under; none when compiling."""
    if torch.compiler.is_compiling():
        return []
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

    return [i.key() for i in retrieve_all_functorch_interpreters()]


def _no_context(ctx, inputs, output):
    pass


def _as_autograd_function(op, setup_context, backward):
    """A forward op with its autograd formula (the same setup_context and backward that
    torch.library.register_autograd takes) as a torch.autograd.Function with setup_context:
    the form torch.func.grad and vmap(grad(...)) (per-sample gradients) need, which a C++ op's
    registered formula is not."""

    class Function(torch.autograd.Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(*args):
            return op(*args)

    def backward_without_graph(ctx, *grads):
        # the backward op's own formula refuses double backward; under torch.func it would be
        # entered as another autograd.Function of the old form, which torch.func refuses
        with torch.no_grad():
            return backward(ctx, *grads)

    Function.setup_context = staticmethod(setup_context)
    Function.backward = staticmethod(backward_without_graph)
    return Function


def _forward(op, function, cell: str):
    """The op, or under torch.func.grad (and vjp, jacrev) its autograd.Function. Nested grad,
    which would differentiate the gradients, is refused as double backward is; and jvp and
    jacfwd, which would run the op without a forward-mode formula and see a zero tangent instead
    of failing, as forward AD itself refuses the op."""
    from torch._C._functorch import TransformType

    transforms = _functorch_transforms()
    if TransformType.Jvp in transforms:
        raise NotImplementedError(
            f"tlstm.{cell} has no forward-mode AD formula, so torch.func.jvp and jacfwd cannot "
            f"run it (they would see a zero tangent); tlstm.reference.{cell}, the step-by-step "
            "PyTorch loop with the same parameters, supports them"
        )
    grad_levels = transforms.count(TransformType.Grad)
    if grad_levels > 1:
        raise _double_backward_error(cell)
    return function.apply if grad_levels else op


# --------------------------------------------------------------------------------------------
# Peephole LSTM: one layer, one direction.


def peephole_lstm_layer(
    input: torch.Tensor,  # [T, B, I]
    h0: torch.Tensor,  # [B, R]
    c0: torch.Tensor,  # [B, H]
    weight_ih: torch.Tensor,  # [4H, I]
    weight_hh: torch.Tensor,  # [4H, R]
    bias_ih: torch.Tensor | None = None,  # [4H]
    bias_hh: torch.Tensor | None = None,  # [4H]
    weight_peephole: torch.Tensor | None = None,  # [3, H]: w_ci, w_cf, w_co
    weight_proj: torch.Tensor | None = None,  # [R, H]
    lengths: torch.Tensor | None = None,  # [B] int64 in [0, T], on the input's device
    reverse: bool = False,
    activation: str = "tanh",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Runs one layer and direction over a sequence; returns output [T, B, R], h_n, c_n.

    Steps with ``t >= lengths[b]`` leave sequence b's state unchanged and output zeros. With
    ``reverse`` the sequence is walked from its last step (``lengths[b] - 1``) to its first.
    Lengths outside [0, T] are an error on the CPU; on a GPU they are not checked (that would
    synchronise) and act as the nearest bound. Under autocast the floating arguments are cast to
    the autocast dtype, as for nn.LSTM; on the CPU float16 and bfloat16 run in float32.
    """
    floating, result_dtype = _to_kernel_dtype(
        (input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_peephole, weight_proj)
    )
    forward = _forward(torch.ops.tlstm.peephole_lstm_forward, _PeepholeLSTMForward,
                       "PeepholeLSTM")
    output, h_n, c_n, _, _, _ = forward(
        *floating, lengths, reverse, activation, _needs_saving(*floating),
    )
    return _narrow((output, h_n, c_n), result_dtype)


@torch.library.register_fake("tlstm::peephole_lstm_forward")
def _peephole_lstm_forward_fake(
    input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_peephole, weight_proj,
    lengths, reverse, activation, training,
):
    T, B, _ = input.shape
    H4, R = weight_hh.shape
    H = H4 // 4
    output = input.new_empty(T, B, R)
    h_n = input.new_empty(B, R)
    c_n = input.new_empty(B, H)
    op_math = op_math_dtype(input.dtype)
    if training:
        gates = input.new_empty(T, B, 4 * H)
        hidden_states = input.new_empty(T + 1, B, R)
        cell_states = input.new_empty(T + 1, B, H, dtype=op_math)
    else:
        gates = input.new_empty(0)
        hidden_states = input.new_empty(0)
        cell_states = input.new_empty(0, dtype=op_math)
    return output, h_n, c_n, gates, hidden_states, cell_states


@torch.library.register_fake("tlstm::peephole_lstm_backward")
def _peephole_lstm_backward_fake(
    grad_output, grad_h_n, grad_c_n, input, weight_ih, weight_hh, weight_peephole, weight_proj,
    lengths, gates, hidden_states, cell_states, reverse, activation, need_grad_input,
):
    # The kernels return contiguous gradients whatever the strides of the arguments.
    def like(t):
        return input.new_empty(t.shape) if t is not None else input.new_empty(0)

    return (
        like(input) if need_grad_input else input.new_empty(0),
        like(grad_h_n),
        like(grad_c_n),
        like(weight_ih),
        like(weight_hh),
        input.new_empty(weight_hh.shape[0]),
        like(weight_peephole),
        like(weight_proj),
    )


def _peephole_lstm_setup_context(ctx, inputs, output):
    (input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_peephole, weight_proj,
     lengths, reverse, activation, training) = inputs
    if not training:
        raise RuntimeError(
            "tlstm.peephole_lstm_forward was called with training=False on inputs that require "
            "grad, so it would save nothing for the backward; pass training=True "
            "(tlstm.ops.peephole_lstm_layer does this whenever an input requires grad)"
        )
    _, _, _, gates, hidden_states, cell_states = output
    # The saved buffers are outputs only so that the backward op can read them.
    ctx.mark_non_differentiable(gates, hidden_states, cell_states)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(
        input, weight_ih, weight_hh, weight_peephole, weight_proj, lengths,
        gates, hidden_states, cell_states,
    )
    ctx.reverse = reverse
    ctx.activation = activation


def _peephole_lstm_backward(ctx, grad_output, grad_h_n, grad_c_n, *_saved_buffer_grads):
    (input, weight_ih, weight_hh, weight_peephole, weight_proj, lengths,
     gates, hidden_states, cell_states) = ctx.saved_tensors
    T, B, _ = input.shape
    H4, R = weight_hh.shape
    if grad_output is None:
        grad_output = input.new_zeros(T, B, R)
    if grad_h_n is None:
        grad_h_n = input.new_zeros(B, R)
    if grad_c_n is None:
        grad_c_n = input.new_zeros(B, H4 // 4)
    needs = ctx.needs_input_grad
    (grad_input, grad_h0, grad_c0, grad_weight_ih, grad_weight_hh, grad_bias,
     grad_weight_peephole, grad_weight_proj) = torch.ops.tlstm.peephole_lstm_backward(
        grad_output.contiguous(), grad_h_n.contiguous(), grad_c_n.contiguous(), input,
        weight_ih, weight_hh, weight_peephole, weight_proj, lengths, gates, hidden_states,
        cell_states, ctx.reverse, ctx.activation, needs[0],
    )

    def keep(grad, k):
        return grad if needs[k] else None

    return (
        keep(grad_input, 0), keep(grad_h0, 1), keep(grad_c0, 2), keep(grad_weight_ih, 3),
        keep(grad_weight_hh, 4), keep(grad_bias, 5), keep(grad_bias, 6),
        keep(grad_weight_peephole, 7), keep(grad_weight_proj, 8), None, None, None, None,
    )


torch.library.register_autograd(
    "tlstm::peephole_lstm_forward",
    _peephole_lstm_backward,
    setup_context=_peephole_lstm_setup_context,
)
_PeepholeLSTMForward = _as_autograd_function(
    torch.ops.tlstm.peephole_lstm_forward, _peephole_lstm_setup_context, _peephole_lstm_backward)
# Differentiating the backward op (create_graph=True, then another backward) is an error that
# says so, instead of autograd's silent zeros for an op without an autograd formula.
torch.library.register_autograd(
    "tlstm::peephole_lstm_backward",
    _double_backward_unsupported("PeepholeLSTM"),
    setup_context=_no_context,
)


# --------------------------------------------------------------------------------------------
# Tensorized LSTM: a whole sequence.


def tensorized_lstm_sequence(
    input: torch.Tensor,  # [T, B, I]
    h0: torch.Tensor,  # [B, P, M], or [B, P, P, M] for the 3-D cell
    c0: torch.Tensor,  # as h0
    weight_ih: torch.Tensor,  # [M, I]
    bias_ih: torch.Tensor | None,  # [M]
    weight_hh: torch.Tensor,  # [G, M, K'], or [G, M, K', K'] for the 3-D cell
    bias_hh: torch.Tensor | None,  # [G]
    norm_weight: torch.Tensor | None,  # [5, M]
    norm_bias: torch.Tensor | None,  # [5, M]
    lengths: torch.Tensor | None,  # [B] int64 in [0, T], on the input's device
    depth: int,
    kernel_size: int,
    feedback: bool,
    memory_conv: bool,
    flush: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Runs the tensorized LSTM over a sequence; returns the top outputs [T, B, M] (y_t =
    h_{t+delay} at row P, or at (P, P) for the 3-D cell, zero past each length) and H, C (as
    h0) after step T (after step lengths[b] for sequence b), the last step that reads an input,
    with or without flush. The cell's shape is weight_hh's: [G, M, K'] the 2-D cell, [G, M, K',
    K'] the 3-D one.

    Lengths outside [0, T] are an error on the CPU; on a GPU they are not checked (that would
    synchronise) and act as the nearest bound. Dtypes as for peephole_lstm_layer."""
    floating, result_dtype = _to_kernel_dtype(
        (input, h0, c0, weight_ih, bias_ih, weight_hh, bias_hh, norm_weight, norm_bias)
    )
    forward = _forward(torch.ops.tlstm.tensorized_lstm_forward, _TensorizedLSTMForward,
                       "TensorizedLSTM")
    output, h_n, c_n, *_ = forward(
        *floating, lengths, depth, kernel_size, feedback, memory_conv, flush,
        _needs_saving(*floating),
    )
    return _narrow((output, h_n, c_n), result_dtype)


@torch.library.register_fake("tlstm::tensorized_lstm_forward")
def _tensorized_lstm_forward_fake(
    input, h0, c0, weight_ih, bias_ih, weight_hh, bias_hh, norm_weight, norm_bias, lengths,
    depth, kernel_size, feedback, memory_conv, flush, training,
):
    T, B, _ = input.shape
    M = h0.shape[-1]
    N = math.prod(h0.shape[1:-1])  # locations: P, or P * P
    memory_taps = kernel_size ** (weight_hh.dim() - 2)
    S = T + (depth - 1 if flush else 0)
    op_math = op_math_dtype(input.dtype)
    output = input.new_empty(T, B, M)
    h_n, c_n = input.new_empty(h0.shape), input.new_empty(h0.shape)
    if not training:
        return (output, h_n, c_n, input.new_empty(0), input.new_empty(0), input.new_empty(0),
                input.new_empty(0, dtype=op_math), input.new_empty(0, dtype=op_math),
                input.new_empty(0, dtype=op_math))
    norm_slots = S if norm_weight is not None else 0
    return (  # rows in the kernels' order: location first
        output, h_n, c_n,
        input.new_empty(S + 1, N + 1, B, M),
        input.new_empty(S, N, B, 4 * M),
        input.new_empty(S if memory_conv else 0, N, B, memory_taps),
        input.new_empty(norm_slots, N, B, 5, M, dtype=op_math),
        input.new_empty(norm_slots, N, B, 5, dtype=op_math),
        input.new_empty(S + 1, N, B, M, dtype=op_math),
    )


@torch.library.register_fake("tlstm::tensorized_lstm_backward")
def _tensorized_lstm_backward_fake(
    grad_output, grad_h_n, grad_c_n, input, weight_ih, weight_hh, norm_weight, norm_bias,
    lengths, hcat, gates, q, norm_hat, norm_rstd, cells, depth, kernel_size, feedback,
    memory_conv, flush, need_grad_input,
):
    def like(t):  # the kernels return contiguous gradients
        return input.new_empty(t.shape) if t is not None else input.new_empty(0)

    return (
        like(input) if need_grad_input else input.new_empty(0),
        like(grad_h_n), like(grad_c_n), like(weight_ih), input.new_empty(weight_ih.shape[0]),
        like(weight_hh), input.new_empty(weight_hh.shape[0]), like(norm_weight), like(norm_bias),
    )


def _tensorized_lstm_setup_context(ctx, inputs, output):
    (input, h0, c0, weight_ih, bias_ih, weight_hh, bias_hh, norm_weight, norm_bias, lengths,
     depth, kernel_size, feedback, memory_conv, flush, training) = inputs
    if not training:
        raise RuntimeError(
            "tlstm.tensorized_lstm_forward was called with training=False on inputs that "
            "require grad, so it would save nothing for the backward; pass training=True "
            "(tlstm.ops.tensorized_lstm_sequence does this whenever an input requires grad)"
        )
    saved = output[3:]
    ctx.mark_non_differentiable(*saved)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(input, weight_ih, weight_hh, norm_weight, norm_bias, lengths, *saved)
    ctx.config = (depth, kernel_size, feedback, memory_conv, flush)


def _tensorized_lstm_backward(ctx, grad_output, grad_h_n, grad_c_n, *_saved_buffer_grads):
    (input, weight_ih, weight_hh, norm_weight, norm_bias, lengths, *saved) = ctx.saved_tensors
    T, B, _ = input.shape
    depth, kernel_size = ctx.config[:2]
    P = (depth - 1) * ((kernel_size - 1) // 2) + 1
    shape = (B,) + (P,) * (weight_hh.dim() - 2) + (weight_ih.shape[0],)  # as h0
    if grad_output is None:
        grad_output = input.new_zeros(T, B, shape[-1])
    if grad_h_n is None:
        grad_h_n = input.new_zeros(shape)
    if grad_c_n is None:
        grad_c_n = input.new_zeros(shape)
    needs = ctx.needs_input_grad
    grads = torch.ops.tlstm.tensorized_lstm_backward(
        grad_output.contiguous(), grad_h_n.contiguous(), grad_c_n.contiguous(), input,
        weight_ih, weight_hh, norm_weight, norm_bias, lengths, *saved, *ctx.config, needs[0],
    )
    (grad_input, grad_h0, grad_c0, grad_weight_ih, grad_bias_ih, grad_weight_hh, grad_bias_hh,
     grad_norm_weight, grad_norm_bias) = grads
    ordered = (grad_input, grad_h0, grad_c0, grad_weight_ih, grad_bias_ih, grad_weight_hh,
               grad_bias_hh, grad_norm_weight, grad_norm_bias)
    return tuple(g if needs[k] else None for k, g in enumerate(ordered)) + (None,) * 7


torch.library.register_autograd(
    "tlstm::tensorized_lstm_forward",
    _tensorized_lstm_backward,
    setup_context=_tensorized_lstm_setup_context,
)
_TensorizedLSTMForward = _as_autograd_function(
    torch.ops.tlstm.tensorized_lstm_forward, _tensorized_lstm_setup_context,
    _tensorized_lstm_backward)
torch.library.register_autograd(
    "tlstm::tensorized_lstm_backward",
    _double_backward_unsupported("TensorizedLSTM"),
    setup_context=_no_context,
)
