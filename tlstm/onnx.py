"""ONNX export of the peephole LSTM as ONNX's own ``LSTM`` operator, which has peepholes.

``import tlstm`` registers the translation below with the ONNX exporter of PyTorch (the
``torch.export``-based one, ``torch.onnx.export(..., dynamo=True)``) whenever onnxscript is
installed, so that a model holding a ``tlstm.PeepholeLSTM`` exports with plain
``torch.onnx.export``: each layer and direction becomes one standard ``LSTM`` node whose input
``P`` holds the peephole weights, and ONNX Runtime or any other runtime runs it. Where that
registration is unavailable, pass ``custom_translation_table=tlstm.onnx.translation_table()``.

The mapping (docs/cells.md, section 1): ONNX orders the gates i, o, f, c where PyTorch orders
them i, f, g, o, so the rows of the weights and biases are gathered in that order; ONNX's ``P``
is [w_ci, w_co, w_cf]; ``B`` is [b_ih; b_hh]; lengths become ``sequence_lens``; the identity
activation is ONNX's ``Affine`` with alpha 1 and beta 0. ONNX's LSTM has no projection, so a
model with ``proj_size > 0`` is refused with an error that says so.
"""
from __future__ import annotations

import torch

_ONNX_INT32 = 6


def _gate_rows_iofc(hidden_size: int) -> list[int]:
    """Row indices that take a [4H, *] weight from PyTorch's gate order (i, f, g, o) to ONNX's
    (i, o, f, c)."""
    H = hidden_size
    return [*range(0, H), *range(3 * H, 4 * H), *range(H, 2 * H), *range(2 * H, 3 * H)]


def _refuse_projection() -> None:
    raise NotImplementedError(
        "tlstm.PeepholeLSTM with proj_size > 0 cannot be exported to ONNX: ONNX's LSTM "
        "operator has no projection of the hidden state. Export a model with proj_size=0."
    )


def peephole_lstm_forward(input, h0, c0, weight_ih, weight_hh, bias_ih=None, bias_hh=None,
                          weight_peephole=None, weight_proj=None, lengths=None, reverse=False,
                          activation="tanh", training=False):
    """The ONNX translation of ``tlstm::peephole_lstm_forward``: one ``LSTM`` node. The saved
    tensors of a training forward (the last three outputs) have no use in an exported model and
    come out empty."""
    from onnxscript import opset18 as op

    if weight_proj is not None:
        _refuse_projection()
    H = weight_hh.shape[0] // 4
    rows = op.Constant(value_ints=_gate_rows_iofc(H))

    def iofc(tensor):  # [4H, ...] in ONNX's gate order
        return op.Gather(tensor, rows, axis=0)

    def one_direction(tensor):  # ONNX's leading num_directions axis
        return op.Unsqueeze(tensor, op.Constant(value_ints=[0]))

    bias = None
    if bias_ih is not None or bias_hh is not None:
        zeros = op.Expand(op.CastLike(op.Constant(value_float=0.0), weight_hh), op.Constant(
            value_ints=[4 * H]))
        bias = one_direction(op.Concat(iofc(bias_ih if bias_ih is not None else zeros),
                                       iofc(bias_hh if bias_hh is not None else zeros), axis=0))
    peephole = None
    if weight_peephole is not None:  # [3, H]: w_ci, w_cf, w_co -> [1, 3H]: w_ci, w_co, w_cf
        order = op.Gather(weight_peephole, op.Constant(value_ints=[0, 2, 1]), axis=0)
        peephole = op.Reshape(order, op.Constant(value_ints=[1, 3 * H]))
    sequence_lens = op.Cast(lengths, to=_ONNX_INT32) if lengths is not None else None
    if activation == "tanh":
        activations = {}
    else:  # identity: Affine(x) = 1 x + 0; only Affine consumes alpha and beta
        activations = dict(activations=["Sigmoid", "Affine", "Affine"],
                           activation_alpha=[1.0, 1.0], activation_beta=[0.0, 0.0])
    y, h_n, c_n = op.LSTM(
        input, one_direction(iofc(weight_ih)), one_direction(iofc(weight_hh)), bias,
        sequence_lens, one_direction(h0), one_direction(c0), peephole,
        direction="reverse" if reverse else "forward", hidden_size=H, **activations,
    )
    axis0, axis1 = op.Constant(value_ints=[0]), op.Constant(value_ints=[1])
    empty = op.CastLike(op.ConstantOfShape(op.Constant(value_ints=[0])), input)
    return (op.Squeeze(y, axis1), op.Squeeze(h_n, axis0), op.Squeeze(c_n, axis0), empty, empty,
            empty)


def _peephole_lstm_forward_torchscript(g, input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh,
                                       weight_peephole, weight_proj, lengths, reverse, activation,
                                       training):
    """The same node for the TorchScript-based exporter (``torch.onnx.export(...,
    dynamo=False)``)."""
    from torch.onnx import symbolic_helper as sh

    def given(v):
        return not sh._is_none(v)

    if given(weight_proj):
        _refuse_projection()
    H = sh._get_tensor_sizes(weight_hh)[0] // 4

    def const(values):
        return g.op("Constant", value_t=torch.tensor(values, dtype=torch.int64))

    def iofc(tensor):
        return g.op("Gather", tensor, const(_gate_rows_iofc(H)), axis_i=0)

    def one_direction(tensor):
        return g.op("Unsqueeze", tensor, const([0]))

    missing = sh._optional_input_placeholder_tensor(g)  # an omitted optional input
    dtype = sh._try_get_scalar_type(weight_hh).dtype()
    bias = missing
    if given(bias_ih) or given(bias_hh):
        zeros = g.op("Constant", value_t=torch.zeros(4 * H, dtype=dtype))
        bias = one_direction(g.op("Concat", iofc(bias_ih if given(bias_ih) else zeros),
                                  iofc(bias_hh if given(bias_hh) else zeros), axis_i=0))
    peephole = missing
    if given(weight_peephole):
        order = g.op("Gather", weight_peephole, const([0, 2, 1]), axis_i=0)
        peephole = g.op("Reshape", order, const([1, 3 * H]))
    sequence_lens = g.op("Cast", lengths, to_i=_ONNX_INT32) if given(lengths) else missing
    attributes = {}
    if sh._maybe_get_const(activation, "s") != "tanh":
        attributes = dict(activations_s=["Sigmoid", "Affine", "Affine"],
                          activation_alpha_f=[1.0, 1.0], activation_beta_f=[0.0, 0.0])
    y, h_n, c_n = g.op(
        "LSTM", input, one_direction(iofc(weight_ih)), one_direction(iofc(weight_hh)), bias,
        sequence_lens, one_direction(h0), one_direction(c0), peephole,
        direction_s="reverse" if sh._maybe_get_const(reverse, "b") else "forward",
        hidden_size_i=H, outputs=3, **attributes,
    )
    empty = g.op("Constant", value_t=torch.zeros(0, dtype=dtype))
    return (g.op("Squeeze", y, const([1])), g.op("Squeeze", h_n, const([0])),
            g.op("Squeeze", c_n, const([0])), empty, empty, empty)


def translation_table() -> dict:
    """``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)``."""
    return {torch.ops.tlstm.peephole_lstm_forward.default: peephole_lstm_forward}


def register() -> bool:
    """Registers the translations: with the TorchScript-based exporter, and with the default
    registry of the torch.export-based one (onnxscript's torchlib, which ``torch.onnx.export``
    reads); False where onnxscript is missing."""
    torch.onnx.register_custom_op_symbolic("tlstm::peephole_lstm_forward",
                                           _peephole_lstm_forward_torchscript, 14)
    try:
        from onnxscript.function_libs.torch_lib.registration import torch_op
    except ImportError:
        return False
    torch_op("tlstm::peephole_lstm_forward", trace_only=True)(peephole_lstm_forward)
    return True
