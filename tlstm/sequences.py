"""What nn.LSTM does around its recurrence, for both modules: the state and device checks, and
conversions between ``PackedSequence`` data and padded time-major tensors (SequenceBatch puts
the two together).

A packed sequence stores, step after step, the rows of the sequences still running at that step
(``batch_sizes[t]`` of them, sorted longest first). The running (t, b) pairs, taken in row-major
order of the [T, B] mask ``b < batch_sizes[t]``, are exactly the rows of ``data``, so both
directions below are plain differentiable indexing.
"""
from __future__ import annotations

import types
from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import PackedSequence


def refuse_unexpected_arguments(module, unexpected: dict) -> None:
    """Python's TypeError for an unknown keyword argument, naming the public class the user
    built (PeepholeLSTM) rather than the base class whose __init__ took the arguments."""
    if unexpected:
        raise TypeError(f"{type(module).__name__}.__init__() got an unexpected keyword argument "
                        f"'{next(iter(unexpected))}'")


def give_own_init(cls, base) -> None:
    """Gives `cls` a copy of ``base.__init__`` under its own name, so that Python's errors for
    wrong arguments (a missing depth, one positional argument too many) name the class the user
    built (TensorizedLSTM), as nn.LSTM's name LSTM, not the base class that holds the code."""
    if "__init__" in cls.__dict__:
        return
    init = base.__init__
    qualname = f"{cls.__qualname__}.__init__"
    code = init.__code__
    if hasattr(code, "co_qualname"):  # Python 3.11: the name the error messages use
        code = code.replace(co_qualname=qualname)
    own = types.FunctionType(code, init.__globals__, init.__name__, init.__defaults__,
                             init.__closure__)
    own.__kwdefaults__ = init.__kwdefaults__
    own.__doc__, own.__annotations__ = init.__doc__, init.__annotations__
    own.__qualname__, own.__module__ = qualname, cls.__module__
    cls.__init__ = own


def check_state_pair(state, what: str, names: str) -> None:
    """A recurrent state is a tuple (or list) of tensors, as nn.LSTM's ``hx``: a single tensor
    or another type is a TypeError that says so (the callers check the number of tensors)."""
    if isinstance(state, torch.Tensor):
        raise TypeError(
            f"{what} must be a tuple {names} of two tensors, got a single tensor of shape "
            f"{list(state.shape)}"
        )
    if not isinstance(state, (tuple, list)):
        raise TypeError(f"{what} must be a tuple {names} of two tensors, got {type(state).__name__}")


def check_same_device(input: torch.Tensor, tensors, what: str) -> None:
    """nn.LSTM's (ATen's) check that hidden states and parameters sit on the input's device."""
    for t in tensors:
        if t.device != input.device:
            raise RuntimeError(
                f"Input and {what} tensors are not at the same device, found input tensor at "
                f"{input.device} and {what} tensor at {t.device}"
            )


@dataclass
class PackedLayout:
    """Where the rows of a packed sequence sit in the padded [T, B, ...] tensor."""

    steps: torch.Tensor  # [N] int64, time index of each packed row
    rows: torch.Tensor  # [N] int64, batch index of each packed row
    lengths: torch.Tensor  # [B] int64, length of each (sorted) sequence
    T: int
    B: int


def packed_layout(batch_sizes: torch.Tensor, device: torch.device) -> PackedLayout:
    """batch_sizes: [T] int64 on the CPU, as in ``PackedSequence``."""
    T = batch_sizes.numel()
    B = int(batch_sizes[0]) if T > 0 else 0
    running = torch.arange(B).unsqueeze(0) < batch_sizes.unsqueeze(1)  # [T, B]
    steps, rows = running.nonzero(as_tuple=True)
    return PackedLayout(
        steps=steps.to(device),
        rows=rows.to(device),
        lengths=running.sum(0).to(device),
        T=T,
        B=B,
    )


def pad_packed(data: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
    """data [N, *] -> padded [T, B, *] with zeros past each sequence's end."""
    padded = data.new_zeros((layout.T, layout.B) + tuple(data.shape[1:]))
    return padded.index_put((layout.steps, layout.rows), data)


def pack_padded(padded: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
    """padded [T, B, *] -> data [N, *] in packed order."""
    return padded[layout.steps, layout.rows]


class SequenceBatch:
    """What nn.LSTM does around its recurrence, for both modules: a padded, packed or unbatched
    input, batch-first or not, made into a time-major batch, and the results put back in the
    caller's form. The state's batch dimension is the module's (1 for nn.LSTM's (h, c), 0 for
    the tLSTM's (H, C))."""

    def __init__(self, input, batch_first: bool, check_input, name: str) -> None:
        """check_input(tensor, packed) checks a packed input's data here; an unpacked input is
        checked by the caller (check_input(self.input, packed=False)), where nn.LSTM checks it:
        after the state's dimensions."""
        self.packed = isinstance(input, PackedSequence)
        self.batch_first = batch_first
        self.sorted_indices = self.unsorted_indices = None
        if self.packed:
            data, self.batch_sizes, self.sorted_indices, self.unsorted_indices = input
            check_input(data, packed=True)
            if not torch.compiler.is_compiling() and data.size(0) != int(self.batch_sizes.sum()):
                raise RuntimeError(
                    f"PackedSequence: its data has {data.size(0)} rows, but its batch_sizes "
                    f"add up to {int(self.batch_sizes.sum())} (one row per running sequence "
                    "and step)")
            self.layout = packed_layout(self.batch_sizes, data.device)
            self.x = pad_packed(data, self.layout)  # [T, B, I], sorted order
            self.lengths, self.batch, self.is_batched = self.layout.lengths, self.layout.B, True
            return
        if input.dim() not in (2, 3):
            raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D instead")
        self.is_batched = input.dim() == 3
        batch_dim = 0 if batch_first else 1
        # [T, B, I], or [B, T, I] with batch_first
        self.input = input if self.is_batched else input.unsqueeze(batch_dim)
        self.x = self.input.transpose(0, 1) if batch_first else self.input  # [T, B, I]
        self.lengths, self.batch = None, self.input.size(batch_dim)

    def check_state_shape(self, state: torch.Tensor, expected: tuple, dim: int,
                          message: str) -> None:
        """RuntimeError(message) unless state's shape is `expected`, whose size `dim` is the
        batch's. Under torch.compile a packed batch's size is data (batch_sizes[0]), on which a
        graph cannot branch: sorted_state checks that size when the graph runs instead."""
        expected = list(expected)
        if self.packed and torch.compiler.is_compiling():
            expected[dim] = state.size(dim)
        if list(state.shape) != expected:
            raise RuntimeError(message)

    def sorted_state(self, state, dim: int):
        """A state given in the caller's batch order, in the order of the packed batch."""
        if self.packed and torch.compiler.is_compiling():
            state = tuple(_state_of_packed_batch(self.batch_sizes, *state, dim))
        if self.sorted_indices is None:
            return state
        return tuple(s.index_select(dim, self.sorted_indices) for s in state)

    def check_runnable(self, parameters) -> None:
        """nn.LSTM's checks of a non-empty sequence and of the parameters' device."""
        if self.x.size(0) == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        check_same_device(self.x, parameters, "parameter")

    def results(self, output, state, dim: int):
        """output [T, B, *] (time-major, the batch's order) and the final state, in the form and
        order of the input: packed, batch-first or unbatched."""
        if self.packed:
            output = PackedSequence(pack_padded(output, self.layout), self.batch_sizes,
                                    self.sorted_indices, self.unsorted_indices)
            if self.unsorted_indices is not None:
                state = tuple(s.index_select(dim, self.unsorted_indices) for s in state)
            return output, state
        if self.batch_first:
            output = output.transpose(0, 1)
        if not self.is_batched:
            output = output.squeeze(0 if self.batch_first else 1)
            state = tuple(s.squeeze(dim) for s in state)
        return output, state


@torch.library.custom_op("tlstm::state_of_packed_batch", mutates_args=())
def _state_of_packed_batch(batch_sizes: torch.Tensor, h: torch.Tensor, c: torch.Tensor,
                           dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """h, c (copies), after checking that their size `dim` is the packed batch's. A compiled
    graph runs this where eager code checks the state's shape: there the batch size is data,
    and the state's later uses depend on this op, so the check comes first."""
    batch = int(batch_sizes[0]) if batch_sizes.numel() else 0
    for k, s in enumerate((h, c)):
        if s.size(dim) != batch:
            raise RuntimeError(
                f"Expected the initial state[{k}] to hold the packed batch's {batch} sequences "
                f"in dimension {dim}, got shape {list(s.shape)}")
    return h.clone(), c.clone()


@_state_of_packed_batch.register_fake
def _(batch_sizes, h, c, dim):
    return torch.empty_like(h), torch.empty_like(c)


def _state_of_packed_batch_backward(ctx, grad_h, grad_c):
    return None, grad_h, grad_c, None


_state_of_packed_batch.register_autograd(_state_of_packed_batch_backward)
