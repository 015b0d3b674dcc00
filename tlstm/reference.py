"""Pure-PyTorch references: one step at a time, written to be read against docs/cells.md.

They are the ground truth for every backend; tests run them in float64. They share with the
fused modules only what nn.LSTM does around the cell (tlstm/peephole_lstm_base.py), and that
part is itself tested against nn.LSTM.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .peephole_lstm_base import PeepholeLSTMBase
from .tensorized_lstm_base import TensorizedLSTMBase


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


class TensorizedLSTM(TensorizedLSTMBase):
    """Reference tensorized LSTM (docs/cells.md, section 2, and section 7 with tensor_dim=3); same
    constructor, parameters and forward as tlstm.TensorizedLSTM. Rows are numbered as in
    docs/cells.md: row 0 of Hcat is the input, rows 1..P the hidden rows (index p-1 of the
    [B, P, M] state tensors)."""

    def _channel_norm(self, z, use):
        """CN over the M channels of each (b, p), biased variance, eps = 1e-5; use in 0..4 picks
        the (gamma, beta) pair of i, f, g, o, c."""
        if not self.channel_norm:
            return z
        mean = z.mean(dim=-1, keepdim=True)
        var = ((z - mean) ** 2).mean(dim=-1, keepdim=True)
        return (z - mean) / torch.sqrt(var + 1e-5) * self.norm_weight[use] + self.norm_bias[use]

    def _pre_activations(self, x_row, H):
        """A_t at every hidden location from the input row x~_t [B, M] and H_{t-1}: [B, P, G]
        (a conv1d over Hcat's rows 0..P, row 0 the input), or [B, P, P, G] with tensor_dim=3 (a
        conv2d over Hcat's (P+1) x (P+1) plane, the input at corner (0, 0)). Taps reading
        outside Hcat read zeros; without feedback only taps k <= c (nothing past p)."""
        c = (self.kernel_size - 1) // 2
        if self.tensor_dim == 2:
            hcat = torch.cat([x_row.unsqueeze(1), H], dim=1)  # [B, P+1, M]: rows 0..P
            rows_first = hcat.transpose(1, 2)  # [B, M, P+1]
            if self.feedback:
                A = F.conv1d(rows_first, self.weight_hh, self.bias_hh, padding=c)
            else:
                A = F.conv1d(F.pad(rows_first, (c, 0)), self.weight_hh, self.bias_hh)
            return A[:, :, 1:].transpose(1, 2)  # [B, P, G]: the hidden rows 1..P
        B, P, _, M = H.shape
        hcat = x_row.new_zeros(B, P + 1, P + 1, M)  # row 0 and column 0 zero but the corner
        hcat[:, 0, 0] = x_row
        hcat[:, 1:, 1:] = H
        planes = hcat.permute(0, 3, 1, 2)  # [B, M, P+1, P+1]
        if self.feedback:
            A = F.conv2d(planes, self.weight_hh, self.bias_hh, padding=c)
        else:
            A = F.conv2d(F.pad(planes, (c, 0, c, 0)), self.weight_hh, self.bias_hh)
        return A[:, :, 1:, 1:].permute(0, 2, 3, 1)  # [B, P, P, G]: locations 1..P x 1..P

    def _memory_convolution(self, logits, C, neighbour):
        """sum over taps of softmax(logits) C_{t-1} at the tap's location, with replicate
        padding: neighbour [P, K] holds the state index clamp(p - c + k, 1, P) - 1 of tap k of
        location index p-1, along each axis. logits [B, P, K] or [B, P, P, K*K] (tap (k1, k2)
        at k1*K + k2)."""
        Q = torch.softmax(logits, dim=-1)
        if self.tensor_dim == 2:
            return (Q.unsqueeze(-1) * C[:, neighbour]).sum(dim=2)  # C[:, neighbour]: [B, P, K, M]
        B, P, _, M = C.shape
        K = self.kernel_size
        # C[:, n1, n2] for every location and tap: [B, P, K, P, K, M] -> [B, P, P, K*K, M]
        shifted = C[:, neighbour[:, :, None, None], neighbour[None, None, :, :]]
        shifted = shifted.permute(0, 1, 3, 2, 4, 5).reshape(B, P, P, K * K, M)
        return (Q.unsqueeze(-1) * shifted).sum(dim=3)

    def _run_sequence(self, x, h0, c0, lengths, flush):
        """One step at a time; with tensor_dim=3 the state is a P x P plane of locations
        (indices p1-1, p2-1) and the output is read at the corner (P, P) opposite the input."""
        T, B, _ = x.shape
        M, P, K = self.hidden_size, self.rows, self.kernel_size
        c = (K - 1) // 2
        delay = self.delay if flush else 0
        x_proj = F.linear(x, self.weight_ih, self.bias_ih)  # [T, B, M]: x~_t for every step
        # Past the end of a sequence its input is zero, so its input row is b^x.
        padding_row = self.bias_ih if self.bias_ih is not None else x.new_zeros(M)
        neighbour = (torch.arange(1, P + 1, device=x.device).unsqueeze(1) - c
                     + torch.arange(K, device=x.device).unsqueeze(0)).clamp(1, P) - 1  # [P, K]
        per_sequence = (B,) + (1,) * self.tensor_dim  # broadcasts over locations and channels

        H, C = h0, c0
        # The returned state is the one after step T (T_b per sequence), the last step that
        # reads an input; the flush steps after it only produce the last outputs.
        last_input_step = torch.full((B,), T, device=x.device) if lengths is None else lengths
        H_n, C_n = h0, c0
        tops = []
        for s in range(T + delay):
            if lengths is None:
                x_row = x_proj[s] if s < T else padding_row.expand(B, M)
            else:
                real = (s < lengths).unsqueeze(1)
                x_row = torch.where(real, x_proj[min(s, T - 1)], padding_row.expand(B, M))
            A = self._pre_activations(x_row, H)  # [B, *locations, G]
            a_i, a_f, a_g, a_o = (A[..., g * M:(g + 1) * M] for g in range(4))
            I = torch.sigmoid(self._channel_norm(a_i, 0))  # noqa: E741
            Fg = torch.sigmoid(self._channel_norm(a_f, 1))
            G = torch.tanh(self._channel_norm(a_g, 2))
            O = torch.sigmoid(self._channel_norm(a_o, 3))  # noqa: E741
            C_conv = C
            if self.memory_conv:
                C_conv = self._memory_convolution(A[..., 4 * M:], C, neighbour)
            C_new = G * I + C_conv * Fg
            H_new = torch.tanh(self._channel_norm(C_new, 4)) * O
            if lengths is None:
                H, C = H_new, C_new
            else:  # sequence b runs lengths[b] + delay steps; then its state stays
                running = (s < lengths + delay).view(per_sequence)
                H, C = torch.where(running, H_new, H), torch.where(running, C_new, C)
            reads_input = (s < last_input_step).view(per_sequence)
            H_n, C_n = torch.where(reads_input, H, H_n), torch.where(reads_input, C, C_n)
            tops.append(H.flatten(1, -2)[:, -1])  # the last location: row P, or (P, P)
        top = torch.stack(tops[delay:])  # y_t = h_{t + delay, top}
        if lengths is not None:
            real = torch.arange(T, device=x.device).unsqueeze(1) < lengths.unsqueeze(0)
            top = top * real.unsqueeze(2).to(top.dtype)
        return top, H_n, C_n
