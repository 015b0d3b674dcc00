"""The cells as functions of tensors, for code that holds its own parameters (torch.func,
functional training loops): the same entry points the modules call, so the same kernels,
dtype handling and autograd (under torch.func.grad, a torch.autograd.Function with
setup_context, so per-sample gradients work).

    peephole_lstm_layer(input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh,
                        weight_peephole, weight_proj, lengths, reverse, activation)
        one layer and direction of PeepholeLSTM: output [T, B, R], h_n [B, R], c_n [B, H]
    tensorized_lstm_sequence(input, h0, c0, weight_ih, bias_ih, weight_hh, bias_hh,
                             norm_weight, norm_bias, lengths, depth, kernel_size, feedback,
                             memory_conv, flush)
        the 2-D TensorizedLSTM without its output projection: output [T, B, M], H_n, C_n
        [B, P, M]

Shapes use the letters of docs/cells.md; the weights are laid out as the modules' parameters.
"""
from .ops import peephole_lstm_layer, tensorized_lstm_sequence

__all__ = ["peephole_lstm_layer", "tensorized_lstm_sequence"]
