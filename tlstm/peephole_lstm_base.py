"""What the fused and the reference peephole LSTM share: everything ``nn.LSTM`` does around the
cell (constructor checks, parameters and their names, input and state checks, unbatched and
packed input, layers, directions, dropout). Subclasses supply one layer-direction pass.
"""
from __future__ import annotations

import math
import numbers
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import init

from .sequences import (SequenceBatch, check_same_device, check_state_pair,
                        refuse_unexpected_arguments, give_own_init)

ACTIVATIONS = ("tanh", "identity")

# How ATen names dtypes in its messages (nn.LSTM's device and dtype errors come from ATen).
_ATEN_DTYPE_NAMES = {
    torch.float32: "Float",
    torch.float64: "Double",
    torch.float16: "Half",
    torch.bfloat16: "BFloat16",
    torch.complex64: "ComplexFloat",
    torch.complex128: "ComplexDouble",
    torch.int64: "Long",
    torch.int32: "Int",
    torch.int16: "Short",
    torch.int8: "Char",
    torch.uint8: "Byte",
    torch.bool: "Bool",
}


def _aten_dtype_name(dtype: torch.dtype) -> str:
    return _ATEN_DTYPE_NAMES.get(dtype, str(dtype))


class PeepholeLSTMBase(nn.Module):
    """Multi-layer (bi)directional peephole LSTM with ``nn.LSTM``'s interface.

    See ``tlstm.PeepholeLSTM`` for the documentation of the arguments.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        give_own_init(cls, PeepholeLSTMBase)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
        peephole: bool = True,
        activation: str = "tanh",
        **unexpected,
    ) -> None:
        refuse_unexpected_arguments(self, unexpected)
        super().__init__()
        # The same checks, in the same order and words, as nn.LSTM's constructor.
        if (
            not isinstance(dropout, numbers.Number)
            or not 0 <= dropout <= 1
            or isinstance(dropout, bool)
        ):
            raise ValueError(
                "dropout should be a number in range [0, 1] "
                "representing the probability of an element being "
                "zeroed"
            )
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                "dropout option adds dropout after all but last "
                "recurrent layer, so non-zero dropout expects "
                f"num_layers greater than 1, but got dropout={dropout} and "
                f"num_layers={num_layers}",
                stacklevel=2,
            )
        if not isinstance(bias, bool):
            raise TypeError(f"bias should be of type bool, got: {type(bias).__name__}")
        if not isinstance(batch_first, bool):
            raise TypeError(
                f"batch_first should be of type bool, got: {type(batch_first).__name__}"
            )
        if not isinstance(input_size, int):
            raise TypeError(
                f"input_size should be of type int, got: {type(input_size).__name__}"
            )
        if input_size <= 0:
            raise ValueError("input_size must be greater than zero")
        if not isinstance(hidden_size, int):
            raise TypeError(
                f"hidden_size should be of type int, got: {type(hidden_size).__name__}"
            )
        if hidden_size <= 0:
            raise ValueError("hidden_size must be greater than zero")
        if num_layers <= 0:
            raise ValueError("num_layers must be greater than zero")
        if proj_size < 0:
            raise ValueError(
                "proj_size should be a positive integer or zero to disable projections"
            )
        if proj_size >= hidden_size:
            raise ValueError("proj_size has to be smaller than hidden_size")
        if not isinstance(peephole, bool):
            raise TypeError(f"peephole should be of type bool, got: {type(peephole).__name__}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")

        self.mode = "LSTM"
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        self.peephole = peephole
        self.activation = activation

        factory = {"device": device, "dtype": dtype}
        num_directions = 2 if bidirectional else 1
        real_hidden_size = proj_size if proj_size > 0 else hidden_size
        # nn.LSTM's parameters first, in its order, so that the same seed draws the same
        # weights as nn.LSTM; the peephole vectors after them.
        self._all_weights: list[list[str]] = []
        self._peephole_weight_names: list[str] = []
        for layer in range(num_layers):
            for direction in range(num_directions):
                suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
                layer_input_size = input_size if layer == 0 else real_hidden_size * num_directions
                shapes = {
                    "weight_ih": (4 * hidden_size, layer_input_size),
                    "weight_hh": (4 * hidden_size, real_hidden_size),
                }
                if bias:
                    shapes["bias_ih"] = (4 * hidden_size,)
                    shapes["bias_hh"] = (4 * hidden_size,)
                if proj_size > 0:
                    shapes["weight_hr"] = (proj_size, hidden_size)
                names = []
                for base, shape in shapes.items():
                    setattr(self, base + suffix, nn.Parameter(torch.empty(shape, **factory)))
                    names.append(base + suffix)
                if peephole:
                    peephole_names = [f"weight_{g}{suffix}" for g in ("ci", "cf", "co")]
                    self._peephole_weight_names += peephole_names
                    names += peephole_names
                self._all_weights.append(names)
        for name in self._peephole_weight_names:
            setattr(self, name, nn.Parameter(torch.empty(hidden_size, **factory)))
        self.reset_parameters()

    # -- parameters ---------------------------------------------------------------------------

    def reset_parameters(self) -> None:
        """U(-1/sqrt(H), 1/sqrt(H)) for every weight, as nn.LSTM."""
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            init.uniform_(weight, -stdv, stdv)

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    @property
    def _flat_weights_names(self) -> list[str]:
        """nn.LSTM's list of its weights' names, layer by layer and direction by direction (here
        each direction's peephole vectors follow its nn.LSTM weights); code that inspects an
        LSTM's weights reads it."""
        return [name for names in self._all_weights for name in names]

    @property
    def _flat_weights(self) -> list[torch.Tensor]:
        """The weights named by _flat_weights_names, as they are now (parametrized, for one)."""
        return [getattr(self, name) for name in self._flat_weights_names]

    def flatten_parameters(self) -> None:
        """Does nothing, and is there so that code written for nn.LSTM runs unchanged: nn.LSTM
        copies its weights into one cuDNN buffer here; the fused kernels read each weight where
        it is, so there is nothing to flatten."""

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # An nn.LSTM state_dict has no peephole weights: they load as zeros, which makes the
        # cell exactly nn.LSTM's. A state_dict with only some of them is reported as usual.
        names = self._peephole_weight_names
        if names and not any(prefix + n in state_dict for n in names):
            if prefix + "weight_ih_l0" in state_dict:
                for n in names:
                    state_dict[prefix + n] = torch.zeros_like(getattr(self, n))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _layer_weights(self, layer: int, direction: int) -> dict[str, torch.Tensor | None]:
        """The weights of one layer-direction, as the cell functions take them."""
        suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")

        def get(name):
            return getattr(self, name + suffix, None)

        peephole = None
        if self.peephole:
            peephole = torch.stack([get("weight_ci"), get("weight_cf"), get("weight_co")])
        return {
            "weight_ih": get("weight_ih"),
            "weight_hh": get("weight_hh"),
            "bias_ih": get("bias_ih"),
            "bias_hh": get("bias_hh"),
            "weight_peephole": peephole,
            "weight_proj": get("weight_hr"),
        }

    # -- checks, with nn.LSTM's words ---------------------------------------------------------

    def _check_input(self, input: torch.Tensor, packed: bool) -> None:
        weight_dtype = self.weight_ih_l0.dtype
        if input.dtype != weight_dtype and not torch._C._is_any_autocast_enabled():
            raise ValueError(
                f"RNN input dtype ({input.dtype}) does not match weight dtype ({weight_dtype}). "
                f"Convert input: input.to({weight_dtype}), or convert model: model.to({input.dtype})"
            )
        expected_input_dim = 2 if packed else 3
        if input.dim() != expected_input_dim:
            raise RuntimeError(
                f"input must have {expected_input_dim} dimensions, got {input.dim()}"
            )
        if self.input_size != input.size(-1):
            raise RuntimeError(
                f"input.size(-1) must be equal to input_size. Expected {self.input_size}, "
                f"got {input.size(-1)}"
            )

    def _expected_state_sizes(self, batch: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        layers = self.num_layers * (2 if self.bidirectional else 1)
        real_hidden_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        return (layers, batch, real_hidden_size), (layers, batch, self.hidden_size)

    def _check_state(self, input: torch.Tensor, hx, seq: SequenceBatch) -> None:
        expected_h, expected_c = self._expected_state_sizes(seq.batch)
        for k, (state, expected) in enumerate(zip(hx, (expected_h, expected_c))):
            seq.check_state_shape(
                state, expected, 1, f"Expected hidden[{k}] size {expected}, got {list(state.size())}"
            )
        check_same_device(input, hx, "hidden")
        for state in hx:
            if state.dtype != input.dtype and not torch._C._is_any_autocast_enabled():
                raise RuntimeError(
                    "Input and hidden tensors are not the same dtype, found input tensor with "
                    f"{_aten_dtype_name(input.dtype)} and hidden tensor with "
                    f"{_aten_dtype_name(state.dtype)}"
                )

    # -- forward ------------------------------------------------------------------------------

    def _run_layer_direction(
        self,
        x: torch.Tensor,  # [T, B, I_layer]
        h0: torch.Tensor,  # [B, R]
        c0: torch.Tensor,  # [B, H]
        weights: dict,
        lengths: torch.Tensor | None,  # [B] int64
        reverse: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns output [T, B, R], h_n [B, R], c_n [B, H] of one layer and direction."""
        raise NotImplementedError

    def forward(self, input, hx=None):
        """Same arguments and results as ``nn.LSTM.forward``: ``output, (h_n, c_n)``."""
        if hx is not None:
            check_state_pair(hx, "hx", "(h_0, c_0)")
            if len(hx) > 2:  # fewer fail where hx[1] is read, with nn.LSTM's IndexError
                raise RuntimeError("lstm expects two hidden states")
        seq = SequenceBatch(input, self.batch_first, self._check_input, "LSTM")
        if not seq.packed:
            if hx is not None:
                want = 3 if seq.is_batched else 2
                if hx[0].dim() != want or hx[1].dim() != want:
                    kind = "batched 3-D" if seq.is_batched else "unbatched 2-D"
                    raise RuntimeError(
                        f"For {kind} input, hx and cx should also be {want}-D but got "
                        f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors"
                    )
                if not seq.is_batched:
                    hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
            self._check_input(seq.input, packed=False)
        x = seq.x  # [T, B, I]

        if hx is None:
            expected_h, expected_c = self._expected_state_sizes(seq.batch)
            hx = (x.new_zeros(expected_h), x.new_zeros(expected_c))
        else:
            self._check_state(x, hx, seq)
            hx = seq.sorted_state(hx, dim=1)
        seq.check_runnable(self.parameters())

        output, h_n, c_n = self._run_layers(x, hx, seq.lengths)
        return seq.results(output, (h_n, c_n), dim=1)

    def _run_layers(self, x, hx, lengths):
        num_directions = 2 if self.bidirectional else 1
        h_n, c_n = [], []
        layer_input = x
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(num_directions):
                k = layer * num_directions + direction
                out, h, c = self._run_layer_direction(
                    layer_input, hx[0][k], hx[1][k], self._layer_weights(layer, direction),
                    lengths, reverse=direction == 1,
                )
                outputs.append(out)
                h_n.append(h)
                c_n.append(c)
            layer_input = outputs[0] if num_directions == 1 else torch.cat(outputs, 2)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        return layer_input, torch.stack(h_n), torch.stack(c_n)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size != 0:
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if self.batch_first is not False:
            s += f", batch_first={self.batch_first}"
        if self.dropout != 0:
            s += f", dropout={self.dropout}"
        if self.bidirectional is not False:
            s += f", bidirectional={self.bidirectional}"
        if self.peephole is not True:
            s += f", peephole={self.peephole}"
        if self.activation != "tanh":
            s += f", activation={self.activation!r}"
        return s
