"""Python entry points of the registered ``torch.ops.tlstm`` ops.

Each op is a C++ / CUDA kernel chosen by the dispatcher (csrc/). This file gives each op its
shape function (for FakeTensor, ``torch.compile`` and ``torch.export``) and its autograd formula,
which calls the op's own backward op. Dimension letters follow csrc/dimensions.h.
"""
from __future__ import annotations

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
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


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
    lengths: torch.Tensor | None = None,  # [B] int64, on the input's device
    reverse: bool = False,
    activation: str = "tanh",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Runs one layer and direction over a sequence; returns output [T, B, R], h_n, c_n.

    Steps with ``t >= lengths[b]`` leave sequence b's state unchanged and output zeros. With
    ``reverse`` the sequence is walked from its last step (``lengths[b] - 1``) to its first.
    """
    training = _needs_saving(
        input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_peephole, weight_proj
    )
    output, h_n, c_n, _, _, _ = torch.ops.tlstm.peephole_lstm_forward(
        input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_peephole, weight_proj,
        lengths, reverse, activation, training,
    )
    return output, h_n, c_n


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
