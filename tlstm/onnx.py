"""ONNX export: the peephole LSTM as ONNX's own ``LSTM`` operator, which has peepholes, and
the tensorized LSTM as a ``Loop`` of standard operators.

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

The tensorized LSTM (``tlstm::tensorized_lstm_forward``, 2-D or 3-D) becomes one ``Loop``
over its steps of standard ops, for the torch.export-based exporter only; the TorchScript-based
one refuses it and says to pass ``dynamo=True``.
"""
from __future__ import annotations

import itertools

import torch

_ONNX_INT32 = 6
_loop_bodies = itertools.count()  # names the values of each Loop body apart, SSA over a model


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


def _refuse_tensorized_torchscript(*args, **kwargs):
    raise NotImplementedError(
        "tlstm.TensorizedLSTM does not export with the TorchScript-based exporter "
        "(torch.onnx.export(..., dynamo=False)): its recurrence needs an ONNX Loop with a "
        "subgraph, which only the translation for the torch.export-based exporter builds. Use "
        "torch.onnx.export(..., dynamo=True)."
    )


def tensorized_lstm_forward(input, h0, c0, weight_ih, bias_ih=None, weight_hh=None,
                            bias_hh=None, norm_weight=None, norm_bias=None, lengths=None,
                            depth=1, kernel_size=3, feedback=True, memory_conv=True, flush=True,
                            training=False):
    """The ONNX translation of ``tlstm::tensorized_lstm_forward`` (the 2-D and the 3-D tLSTM,
    docs/cells.md sections 2-7, as tlstm/reference.py steps them): the projected inputs x~_t (one
    MatMul over the sequence, padded with b^x for the flush steps and past each length), then one
    ``Loop`` over the S = T + delay steps (T without flush) whose body is the step on the
    locations flattened to N = P (or P*P): the convolution over Hcat as one ``Gather`` of every
    location's taps (a table of which Hcat location each tap reads: the input, a hidden location,
    or a zero) and one ``MatMul`` of the taps side by side (ONNX Runtime has no float64 ``Conv``
    on the CPU), the channel norms from ``ReduceMean``, the gates, the memory convolution
    (``Softmax`` over the taps, a ``Gather`` of the replicate-padded neighbours), and the top
    location as the loop's scan output. T and B stay dynamic. The saved tensors of a training
    forward come out empty, as for the peephole LSTM."""
    import onnx_ir as ir
    from onnx_ir import convenience as ir_convenience
    from onnxscript import evaluator
    from onnxscript import opset18 as op

    M = weight_ih.shape[0]
    K = kernel_size
    c = (K - 1) // 2
    P = (depth - 1) * c + 1
    axes = len(weight_hh.shape) - 2  # 1: rows, 2: the plane
    taps_per_axis = K if feedback else c + 1
    tap_table, neighbour_table = _tensorized_tables(P, K, c, taps_per_axis, axes)
    N = len(tap_table)  # locations: P, or P * P
    G = 4 * M + (K ** axes if memory_conv else 0)
    delay = depth - 1 if flush else 0
    dtype = input.dtype

    def ints(values):
        return op.Constant(value_ints=list(values))

    def scalar_int(value):
        return op.Constant(value_int=value)

    def like(value):  # a float scalar in the input's dtype
        return op.CastLike(op.Constant(value_float=value), input)

    # x~ for every step: [S, B, M]; b^x past the end of the input and of each sequence
    x_proj = op.MatMul(input, op.Transpose(weight_ih, perm=[1, 0]))
    padding_row = bias_ih if bias_ih is not None else op.Expand(like(0.0), ints([M]))
    if bias_ih is not None:
        x_proj = op.Add(x_proj, bias_ih)
    shape = op.Shape(input)
    T = op.Gather(shape, scalar_int(0), axis=0)  # int64 scalars
    B = op.Gather(shape, scalar_int(1), axis=0)
    batch_and_channels = op.Concat(op.Unsqueeze(B, ints([0])), ints([M]), axis=0)
    if delay:
        tail = op.Expand(padding_row, op.Concat(ints([delay]), batch_and_channels, axis=0))
        x_proj = op.Concat(x_proj, tail, axis=0)
    S = op.Add(T, scalar_int(delay)) if delay else T
    steps = op.Range(scalar_int(0), S, scalar_int(1))  # [S]
    if lengths is not None:
        lengths = op.Cast(lengths, to=ir.DataType.INT64)
        real = op.Less(op.Unsqueeze(steps, ints([1])), op.Unsqueeze(lengths, ints([0])))
        x_proj = op.Where(op.Unsqueeze(real, ints([2])), x_proj, padding_row)  # [S, B, M]
        last_input_step = lengths  # [B]
    else:
        last_input_step = op.Expand(T, op.Unsqueeze(B, ints([0])))
    neighbour = op.Constant(value=ir.tensor(neighbour_table, dtype=ir.DataType.INT64))  # [N, Kq]
    tap_reads = op.Constant(value=ir.tensor(tap_table, dtype=ir.DataType.INT64))  # [N, K'^axes]
    taps = len(tap_table[0])
    eps = like(1e-5)
    # The convolution as one MatMul: weight_hh [G, M, K'(, K')] -> [K'^axes*M, G], tap-major
    weight_taps = op.Reshape(op.Transpose(op.Reshape(weight_hh, ints([G, M, taps])),
                                          perm=[2, 1, 0]), ints([taps * M, G]))
    h0, c0 = (op.Reshape(t, ints([0, N, M])) for t in (h0, c0))  # [B, N, M]

    # The loop body, recorded as a subgraph: swap the recorder's node list (and its cache of
    # constants, so that none made inside is reused outside) while the step is traced.
    tracer = evaluator.default()
    prefix = f"tlstm_step{next(_loop_bodies)}"
    outer_nodes, outer_constants = tracer.nodes, tracer.constant_farm
    tracer.nodes, tracer.constant_farm = [], {}
    state_type = ir.TensorType(dtype)
    body_inputs = [
        ir.Value(name=f"{prefix}_s", shape=ir.Shape([]), type=ir.TensorType(ir.DataType.INT64)),
        ir.Value(name=f"{prefix}_cond", shape=ir.Shape([]), type=ir.TensorType(ir.DataType.BOOL)),
        *(ir.Value(name=f"{prefix}_{n}", shape=ir.Shape([None, N, M]), type=state_type)
          for n in ("H", "C", "H_n", "C_n")),
    ]
    step, cond, H, C, H_n, C_n = body_inputs

    def channel_norm(z, use):
        if norm_weight is None:
            return z
        last = ints([-1])
        centred = op.Sub(z, op.ReduceMean(z, last, keepdims=1))
        var = op.ReduceMean(op.Mul(centred, centred), last, keepdims=1)
        gamma = op.Gather(norm_weight, scalar_int(use), axis=0)
        beta = op.Gather(norm_bias, scalar_int(use), axis=0)
        return op.Add(op.Mul(op.Div(centred, op.Sqrt(op.Add(var, eps))), gamma), beta)

    x_row = op.Gather(x_proj, step, axis=0)  # [B, M]
    # Hcat's locations: the input, the N hidden ones, and a zero for taps that read nothing
    zero = op.Mul(op.Unsqueeze(x_row, ints([1])), like(0.0))
    hcat = op.Concat(op.Unsqueeze(x_row, ints([1])), H, zero, axis=1)  # [B, N+2, M]
    read = op.Reshape(op.Gather(hcat, tap_reads, axis=1), ints([0, N, taps * M]))
    A = op.MatMul(read, weight_taps)  # [B, N, G]
    if bias_hh is not None:
        A = op.Add(A, bias_hh)

    def channels(start, stop):
        return op.Slice(A, ints([start]), ints([stop]), ints([2]))

    gate_i = op.Sigmoid(channel_norm(channels(0, M), 0))
    gate_f = op.Sigmoid(channel_norm(channels(M, 2 * M), 1))
    gate_g = op.Tanh(channel_norm(channels(2 * M, 3 * M), 2))
    gate_o = op.Sigmoid(channel_norm(channels(3 * M, 4 * M), 3))
    C_conv = C
    if memory_conv:
        Q = op.Softmax(channels(4 * M, G), axis=-1)  # [B, N, Kq]
        shifted = op.Gather(C, neighbour, axis=1)  # [B, N, Kq, M]
        C_conv = op.ReduceSum(op.Mul(op.Unsqueeze(Q, ints([3])), shifted), ints([2]),
                              keepdims=0)
    C_new = op.Add(op.Mul(gate_g, gate_i), op.Mul(C_conv, gate_f))
    H_new = op.Mul(op.Tanh(channel_norm(C_new, 4)), gate_o)
    per_sequence = ints([-1, 1, 1])
    if lengths is not None:  # sequence b runs lengths[b] + delay steps; then its state stays
        running = op.Reshape(op.Less(step, op.Add(lengths, scalar_int(delay))), per_sequence)
        H_new, C_new = op.Where(running, H_new, H), op.Where(running, C_new, C)
    reads_input = op.Reshape(op.Less(step, last_input_step), per_sequence)
    H_n_new, C_n_new = op.Where(reads_input, H_new, H_n), op.Where(reads_input, C_new, C_n)
    top = op.Gather(H_new, scalar_int(N - 1), axis=1)  # [B, M]: row P, or (P, P)
    body_outputs = [op.Identity(cond), op.Identity(H_new), op.Identity(C_new),
                    op.Identity(H_n_new), op.Identity(C_n_new), op.Identity(top)]
    for value, value_type in zip(body_outputs, [ir.TensorType(ir.DataType.BOOL)]
                                 + [state_type] * 5):
        value.type = value_type
    for n, node in enumerate(tracer.nodes):  # names of their own: the model must stay SSA
        for k, value in enumerate(node.outputs):
            value.name = f"{prefix}_{n}_{k}"
    body = ir.Graph(body_inputs, body_outputs, nodes=tracer.nodes,
                    name=prefix)
    tracer.nodes, tracer.constant_farm = outer_nodes, outer_constants

    loop = ir.Node(
        "", "Loop",
        inputs=[S, op.Constant(value=ir.tensor(True)), h0, c0, h0, c0],
        attributes=ir_convenience.convert_attributes({"body": body}),
        num_outputs=5, version=tracer.opset.version,
    )
    tracer.nodes.append(loop)
    _, _, h_n, c_n, tops = loop.outputs  # tops [S, B, M]
    for value in loop.outputs:
        value.type = state_type
    h_n, c_n = (op.Reshape(t, ints([0, *(P,) * axes, M])) for t in (h_n, c_n))
    output = op.Slice(tops, ints([delay]), op.Unsqueeze(S, ints([0])), ints([0])) if delay \
        else op.Identity(tops)
    if lengths is not None:  # zero past each length
        real = op.Less(op.Unsqueeze(op.Range(scalar_int(0), T, scalar_int(1)), ints([1])),
                       op.Unsqueeze(lengths, ints([0])))
        output = op.Mul(output, op.CastLike(op.Unsqueeze(real, ints([2])), output))
    empty = op.CastLike(op.ConstantOfShape(ints([0])), input)
    math_dtype = ir.DataType.FLOAT if dtype in (ir.DataType.FLOAT16, ir.DataType.BFLOAT16) \
        else dtype
    empty_math = op.Cast(op.ConstantOfShape(ints([0])), to=math_dtype)
    return output, h_n, c_n, empty, empty, empty, empty_math, empty_math, empty_math


def _tensorized_tables(P: int, K: int, c: int, taps_per_axis: int, axes: int):
    """The step's index tables over the N = P**axes locations (row-major coordinates 1..P):
    which Hcat location each weight tap reads, 0 the input (row 0, or the corner (0, 0)), 1..N a
    hidden location and N + 1 a zero (outside the tensor, or row 0 / column 0 off the corner);
    and the location each memory tap reads (replicate padding), 0-based."""
    locations = list(itertools.product(range(1, P + 1), repeat=axes))
    index = {loc: n for n, loc in enumerate(locations)}
    N = len(locations)

    def reads(loc, ks):
        r = tuple(p - c + k for p, k in zip(loc, ks))
        if all(v == 0 for v in r):
            return 0
        return 1 + index[r] if r in index else N + 1

    taps = list(itertools.product(range(taps_per_axis), repeat=axes))
    memory = list(itertools.product(range(K), repeat=axes))
    tap_table = [[reads(loc, ks) for ks in taps] for loc in locations]
    neighbour = [[index[tuple(min(max(p - c + k, 1), P) for p, k in zip(loc, ks))]
                  for ks in memory] for loc in locations]
    return tap_table, neighbour


def translation_table() -> dict:
    """``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)``."""
    return {torch.ops.tlstm.peephole_lstm_forward.default: peephole_lstm_forward,
            torch.ops.tlstm.tensorized_lstm_forward.default: tensorized_lstm_forward}


def register() -> bool:
    """Registers the translations: with the TorchScript-based exporter, and with the default
    registry of the torch.export-based one (onnxscript's torchlib, which ``torch.onnx.export``
    reads); False where onnxscript is missing."""
    torch.onnx.register_custom_op_symbolic("tlstm::peephole_lstm_forward",
                                           _peephole_lstm_forward_torchscript, 14)
    torch.onnx.register_custom_op_symbolic("tlstm::tensorized_lstm_forward",
                                           _refuse_tensorized_torchscript, 14)
    try:
        from onnxscript.function_libs.torch_lib.registration import torch_op
    except ImportError:
        return False
    torch_op("tlstm::peephole_lstm_forward", trace_only=True)(peephole_lstm_forward)
    torch_op("tlstm::tensorized_lstm_forward", trace_only=True)(tensorized_lstm_forward)
    return True
