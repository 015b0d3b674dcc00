"""What the fused and the reference tensorized LSTM share: the constructor and its checks, the
parameters (names and shapes of docs/cells.md, section 5), input and state handling (padded, packed,
unbatched, batch_first), the delay and flush rules and the output projection. Subclasses supply
the recurrence over a padded time-major sequence.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import init
from torch.nn.utils.rnn import PackedSequence
from .sequences import (SequenceBatch, check_same_device, check_state_pair,
                        refuse_unexpected_arguments, give_own_init)


# The channel norms' initial gain gamma. Each norm makes its input unit-variance whatever the
# weights' scale, so the gain sets how much a step amplifies gradients. With 1, at depth 3 and
# more (every row reads three hidden neighbours) a gradient grew ~6-9% per step back in time at
# initialisation: |dL/dx| at the first positions of a chunk 35-60x the mid-sequence ones, float32
# gradients 2e-2 from float64 at T=128. With 0.5 they shrink by ~2% a step, float32 agrees to
# 2e-5, and a delayed-recall task trained better at depth 3 and 5 (docs/cells.md, section 5).
NORM_WEIGHT_INIT = 0.5


def _check_positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be greater than zero, got {value}")


class TensorizedLSTMBase(nn.Module):
    """Tensorized LSTM (He et al., NIPS 2017); see ``tlstm.TensorizedLSTM`` for the arguments."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        give_own_init(cls, TensorizedLSTMBase)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        depth: int,
        kernel_size: int = 3,
        channel_norm: bool = True,
        memory_conv: bool = True,
        feedback: bool = True,
        bias: bool = True,
        proj_size: int = 0,
        batch_first: bool = False,
        device=None,
        dtype=None,
        tensor_dim: int = 2,
        **unexpected,
    ) -> None:
        refuse_unexpected_arguments(self, unexpected)
        super().__init__()
        if tensor_dim not in (2, 3) or isinstance(tensor_dim, bool):
            raise ValueError(f"tensor_dim must be 2 (a P x M state) or 3 (P x P x M), got "
                             f"{tensor_dim!r}")
        _check_positive_int("input_size", input_size)
        _check_positive_int("hidden_size", hidden_size)
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
            raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
        if (not isinstance(kernel_size, int) or isinstance(kernel_size, bool) or kernel_size < 3
                or kernel_size % 2 == 0):
            raise ValueError(
                f"kernel_size must be an odd integer >= 3, got {kernel_size!r} (with 1 the "
                "hidden rows would never see the input row)"
            )
        for name, flag in (("channel_norm", channel_norm), ("memory_conv", memory_conv),
                           ("feedback", feedback), ("bias", bias), ("batch_first", batch_first)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} should be of type bool, got: {type(flag).__name__}")
        if not isinstance(proj_size, int) or proj_size < 0:
            raise ValueError(
                "proj_size should be a positive integer or zero to disable projections"
            )

        self.input_size = input_size
        self.hidden_size = hidden_size
        self.depth = depth
        self.kernel_size = kernel_size
        self.channel_norm = channel_norm
        self.memory_conv = memory_conv
        self.feedback = feedback
        self.bias = bias
        self.proj_size = proj_size
        self.batch_first = batch_first
        self.tensor_dim = tensor_dim

        M, K, c = hidden_size, kernel_size, (kernel_size - 1) // 2
        self.rows = (depth - 1) * c + 1  # P
        # G: 4M gate channels, and one memory-kernel logit per tap (K, or K x K over a plane)
        gate_channels = 4 * M + (K ** (tensor_dim - 1) if memory_conv else 0)
        taps = K if feedback else c + 1  # K' per axis
        factory = {"device": device, "dtype": dtype}
        self.weight_ih = nn.Parameter(torch.empty(M, input_size, **factory))
        # Conv1d layout [G, M, K'], or Conv2d's [G, M, K', K'] for the 3-D tLSTM
        self.weight_hh = nn.Parameter(
            torch.empty(gate_channels, M, *(taps,) * (tensor_dim - 1), **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(M, **factory))
            self.bias_hh = nn.Parameter(torch.empty(gate_channels, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        if channel_norm:
            self.norm_weight = nn.Parameter(torch.empty(5, M, **factory))
            self.norm_bias = nn.Parameter(torch.empty(5, M, **factory))
        else:
            self.register_parameter("norm_weight", None)
            self.register_parameter("norm_bias", None)
        if proj_size > 0:
            self.weight_proj = nn.Parameter(torch.empty(proj_size, M, **factory))
        else:
            self.register_parameter("weight_proj", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """U(-1/sqrt(M), 1/sqrt(M)) for the weights and biases, as nn.LSTM; CN gains
        NORM_WEIGHT_INIT (0.5) and offsets 0."""
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for name, p in self.named_parameters():
            if name == "norm_weight":
                init.constant_(p, NORM_WEIGHT_INIT)
            elif name == "norm_bias":
                init.zeros_(p)
            else:
                init.uniform_(p, -stdv, stdv)

    def flatten_parameters(self) -> None:
        """Does nothing: there so that code written for nn.LSTM, which calls it, runs unchanged."""

    @property
    def state_shape(self) -> tuple:
        """The shape of H and C for one sequence: (P, M), or (P, P, M) with tensor_dim=3."""
        return (self.rows,) * (self.tensor_dim - 1) + (self.hidden_size,)

    @property
    def delay(self) -> int:
        """Steps from an input to its output: the top row sees x_t at step t + depth - 1."""
        return self.depth - 1

    # -- checks ---------------------------------------------------------------------------------

    def _check_input(self, input: torch.Tensor, packed: bool) -> None:
        if input.dtype != self.weight_ih.dtype and not torch._C._is_any_autocast_enabled():
            raise ValueError(
                f"TensorizedLSTM input dtype ({input.dtype}) does not match weight dtype "
                f"({self.weight_ih.dtype}). Convert input: input.to({self.weight_ih.dtype}), or "
                f"convert model: model.to({input.dtype})"
            )
        expected_dim = 2 if packed else 3
        if input.dim() != expected_dim:
            raise RuntimeError(f"input must have {expected_dim} dimensions, got {input.dim()}")
        if input.size(-1) != self.input_size:
            raise RuntimeError(
                f"input.size(-1) must be equal to input_size. Expected {self.input_size}, "
                f"got {input.size(-1)}"
            )

    def _check_state(self, input: torch.Tensor, state, seq: SequenceBatch) -> None:
        if len(state) != 2:
            raise TypeError(f"state must be a tuple (H, C) of two tensors, got {len(state)}")
        expected = (seq.batch, *self.state_shape)
        letters = "(B, P, M)" if self.tensor_dim == 2 else "(B, P, P, M)"
        for k, s in enumerate(state):
            seq.check_state_shape(
                s, expected, 0, f"Expected state[{k}] size {expected} = {letters}, got "
                f"{list(s.shape)}"
            )
        check_same_device(input, state, "state")
        for s in state:
            if s.dtype != input.dtype and not torch._C._is_any_autocast_enabled():
                raise RuntimeError(
                    f"Input and state tensors are not the same dtype, found input tensor with "
                    f"{input.dtype} and state tensor with {s.dtype}"
                )

    # -- forward --------------------------------------------------------------------------------

    def _run_sequence(self, x, h0, c0, lengths, flush):
        """x [T, B, I] -> top outputs [T, B, M] (zero past each length), H_n, C_n [B, *state_shape]
        (the state after step T_b of each sequence, with or without flush)."""
        raise NotImplementedError

    def forward(self, input, state=None, flush: bool = True, *, hx=None):
        """Returns ``output, (H, C)``.

        input: [T, B, I] ([B, T, I] with batch_first), an unbatched [T, I], or a PackedSequence.
        state: ``(H_0, C_0)`` of shape [B, P, M] ([P, M] for unbatched input; [B, P, P, M] with
            tensor_dim=3), zeros if None;
            ``hx=`` is accepted for it, as nn.LSTM names it.
        flush: True runs T + depth - 1 steps and returns y_t = h_{t+depth-1, P} for t = 1..T;
            False runs T steps and returns the raw top row (lagging the input by depth - 1), so
            that a sequence fed in chunks gives the same numbers as fed whole.
        output: [T, B, proj_size or hidden_size]; H, C: as the state, the state after step T (per
            sequence, after its last input), with or without flush: pass it to the next chunk
            as nn.LSTM's (h_n, c_n).
        """
        if hx is not None:
            if state is not None:
                raise TypeError("TensorizedLSTM.forward got the initial state twice: pass "
                                "either state or hx, not both")
            state = hx
        if not isinstance(flush, bool):
            raise TypeError(f"flush should be of type bool, got: {type(flush).__name__}")
        if state is not None:
            check_state_pair(state, "state", "(H, C)")
        if isinstance(input, PackedSequence) and torch.compiler.is_exporting():
            raise NotImplementedError(
                "TensorizedLSTM: exporting a model that passes it a PackedSequence is not "
                "supported (torch.export cannot trace the packed layout, whose shape is data); "
                "export it with a padded batch, or call tlstm.ops.tensorized_lstm_sequence with "
                "per-sequence lengths, which exports (ONNX, dynamo=True)")
        seq = SequenceBatch(input, self.batch_first, self._check_input, "TensorizedLSTM")
        if not seq.packed:
            if state is not None and not seq.is_batched:
                state = tuple(s.unsqueeze(0) for s in state)
            self._check_input(seq.input, packed=False)
        x = seq.x  # [T, B, I]
        if state is None:
            shape = (seq.batch, *self.state_shape)
            state = (x.new_zeros(shape), x.new_zeros(shape))
        else:
            self._check_state(x, state, seq)
            state = seq.sorted_state(state, dim=0)
        seq.check_runnable(self.parameters())

        top, h_n, c_n = self._run_sequence(x, state[0], state[1], seq.lengths, flush)
        output = top if self.weight_proj is None else top @ self.weight_proj.T
        return seq.results(output, (h_n, c_n), dim=0)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, depth={self.depth}"
        if self.kernel_size != 3:
            s += f", kernel_size={self.kernel_size}"
        for name, default in (("channel_norm", True), ("memory_conv", True), ("feedback", True),
                              ("bias", True), ("batch_first", False)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        if self.tensor_dim != 2:
            s += f", tensor_dim={self.tensor_dim}"
        return s
