"""Pure-PyTorch references: one step at a time, written to be read against SPEC.md.

They are the ground truth for every backend; tests run them in float64. They share with the
fused modules only what nn.LSTM does around the cell (tlstm/peephole_lstm_base.py), and that
part is itself tested against nn.LSTM.
"""
from __future__ import annotations

import torch

from .peephole_lstm_base import PeepholeLSTMBase


class PeepholeLSTM(PeepholeLSTMBase):
    """Reference peephole LSTM; same constructor, parameters and forward as tlstm.PeepholeLSTM."""

    def _run_layer_direction(self, x, h0, c0, weights, lengths, reverse):
        act = torch.tanh if self.activation == "tanh" else (lambda v: v)
        w_peep = weights["weight_peephole"]
        w_ci, w_cf, w_co = (w_peep[0], w_peep[1], w_peep[2]) if w_peep is not None else (0, 0, 0)
        w_hh, w_proj = weights["weight_hh"], weights["weight_proj"]
        x_proj = x @ weights["weight_ih"].T  # [T, B, 4H]
        for b in (weights["bias_ih"], weights["bias_hh"]):
            if b is not None:
                x_proj = x_proj + b

        T = x.size(0)
        h, c = h0, c0
        outputs = [None] * T
        for t in (range(T - 1, -1, -1) if reverse else range(T)):
            a_i, a_f, a_g, a_o = (x_proj[t] + h @ w_hh.T).chunk(4, dim=1)
            i = torch.sigmoid(a_i + w_ci * c)  # peeks at the old cell
            f = torch.sigmoid(a_f + w_cf * c)  # peeks at the old cell
            g = act(a_g)
            c_new = f * c + i * g
            o = torch.sigmoid(a_o + w_co * c_new)  # peeks at the new cell
            h_new = o * act(c_new)
            if w_proj is not None:
                h_new = h_new @ w_proj.T
            if lengths is None:
                h, c = h_new, c_new
                outputs[t] = h_new
            else:  # past a sequence's end its state stays and its output is zero
                running = (t < lengths).unsqueeze(1)
                h = torch.where(running, h_new, h)
                c = torch.where(running, c_new, c)
                outputs[t] = torch.where(running, h_new, torch.zeros_like(h_new))
        return torch.stack(outputs), h, c
