"""The public modules: drop-in replacements for torch.nn.LSTM running the fused kernels."""
from __future__ import annotations

from torch import nn

from . import ops
from .peephole_lstm_base import PeepholeLSTMBase
from .tensorized_lstm_base import TensorizedLSTMBase


class PeepholeLSTM(PeepholeLSTMBase):
    r"""Multi-layer peephole LSTM (Gers & Schmidhuber 2000; Graves 2013, eq. 7-11).

    For each layer and step (gate order i, f, g, o as in ``nn.LSTM``):

        i = σ(W_ii x + b_ii + W_hi h + b_hi + w_ci ⊙ c_{t-1})
        f = σ(W_if x + b_if + W_hf h + b_hf + w_cf ⊙ c_{t-1})
        g = act(W_ig x + b_ig + W_hg h + b_hg)
        c_t = f ⊙ c_{t-1} + i ⊙ g
        o = σ(W_io x + b_io + W_ho h + b_ho + w_co ⊙ c_t)
        h_t = o ⊙ act(c_t)            (then h_t W_hr^T with proj_size > 0)

    Arguments, shapes, outputs, parameter names and errors are those of ``nn.LSTM``, plus:

    Args:
        peephole: with False there are no peephole weights and the module computes exactly
            ``nn.LSTM`` (an ``nn.LSTM`` state_dict then loads strictly).
        activation: ``"tanh"`` (default) or ``"identity"`` for the cell input and output.

    Extra parameters per layer ``k`` and direction: ``weight_ci_l{k}``, ``weight_cf_l{k}``,
    ``weight_co_l{k}`` of shape ``(hidden_size,)`` (suffix ``_reverse`` for the backward
    direction). A state_dict of ``nn.LSTM`` loads into a peephole module with these set to zero.

    Each layer and direction runs as one fused op (``torch.ops.tlstm.peephole_lstm_forward``)
    on the CPU or a CUDA GPU; ``torch.compile(fullgraph=True)`` traces it without breaks.
    """

    @classmethod
    def from_lstm(cls, lstm: nn.LSTM, peephole: bool = True) -> "PeepholeLSTM":
        """A PeepholeLSTM computing what ``lstm`` computes (peephole weights start at zero)."""
        weight = lstm.weight_ih_l0
        module = cls(
            lstm.input_size, lstm.hidden_size, num_layers=lstm.num_layers, bias=lstm.bias,
            batch_first=lstm.batch_first, dropout=lstm.dropout,
            bidirectional=lstm.bidirectional, proj_size=lstm.proj_size,
            device=weight.device, dtype=weight.dtype, peephole=peephole,
        )
        module.load_state_dict(lstm.state_dict())
        module.train(lstm.training)
        return module

    def _run_layer_direction(self, x, h0, c0, weights, lengths, reverse):
        return ops.peephole_lstm_layer(
            x, h0, c0, **weights, lengths=lengths, reverse=reverse, activation=self.activation
        )


class TensorizedLSTM(TensorizedLSTMBase):
    r"""Tensorized LSTM (He et al., "Wider and Deeper, Cheaper and Faster: Tensorized LSTMs for
    Sequence Learning", NIPS 2017).

    The hidden state is a [P, M] tensor (P rows of ``hidden_size`` M channels), its rows updated
    by a convolution over the rows whose weights are shared, so the parameter count does not
    grow with the depth; and depth is merged into time: one step updates all rows at once and
    the output for x_t is read from the top row ``depth - 1`` steps later.

    Args:
        input_size: I, features of the input.
        hidden_size: M, channels of each row.
        depth: L >= 1; the tensor has P = (L - 1) * (kernel_size - 1) / 2 + 1 rows.
        kernel_size: K, odd >= 3, taps of the row convolution (and of the memory convolution).
        channel_norm: normalize each gate and the cell over the channels of each row (+CN).
        memory_conv: the dynamic memory-cell convolution (False: the paper's tLSTM-M).
        feedback: the rows also read the rows above them (False: the paper's tLSTM-F).
        bias: b^x and b^h.
        proj_size: > 0 adds the output projection y = h_top W_proj^T.
        batch_first: input and output [B, T, *]; the state stays [B, P, M].
        tensor_dim: 2, or 3 for the paper's 3-D tLSTM: a P x P x M state updated by a 2-D
            convolution with K x K taps, the input entering at location (0, 0) and the output
            read at (P, P) (docs/cells.md, section 7); state [B, P, P, M], ``weight_hh``
            [G, M, K', K'] (Conv2d layout) and G = 4M + K*K.

    ``forward(input, state=None, flush=True)`` returns ``output, (H, C)``; see
    ``TensorizedLSTMBase.forward``. Parameters: ``weight_ih`` [M, I], ``bias_ih`` [M],
    ``weight_hh`` [G, M, K'] (Conv1d layout), ``bias_hh`` [G], ``norm_weight`` and ``norm_bias``
    [5, M] (channel_norm), ``weight_proj`` [proj_size, M], with G = 4M + K (4M without the
    memory convolution) and K' = K (or (K+1)/2 without feedback).
    """

    def _run_sequence(self, x, h0, c0, lengths, flush):
        return ops.tensorized_lstm_sequence(
            x, h0, c0, self.weight_ih, self.bias_ih, self.weight_hh, self.bias_hh,
            self.norm_weight, self.norm_bias, lengths, self.depth, self.kernel_size,
            self.feedback, self.memory_conv, flush,
        )


def convert_lstms(model: nn.Module, peephole: bool = True) -> nn.Module:
    """Replaces every ``nn.LSTM`` inside ``model`` (in place) by ``PeepholeLSTM.from_lstm``: the
    same weights, the peephole vectors at zero, so the outputs stay those of ``nn.LSTM`` until the
    peepholes train. Returns ``model``, or the replacement where ``model`` is itself an
    ``nn.LSTM``. Optimizers built before the call hold the old parameters: build them after."""
    if type(model) is nn.LSTM:
        return PeepholeLSTM.from_lstm(model, peephole=peephole)
    for name, child in model.named_children():
        replacement = convert_lstms(child, peephole=peephole)
        if replacement is not child:
            setattr(model, name, replacement)
    return model
