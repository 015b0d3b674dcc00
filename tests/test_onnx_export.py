"""ONNX export: a model holding a PeepholeLSTM exports with torch.onnx.export (the
torch.export-based exporter and the TorchScript-based one) to standard ONNX LSTM nodes with the
peephole input P, and ONNX Runtime reproduces the module in float32 for several shapes from one
export."""
import pytest
import torch

import tlstm
from helpers import rel_err

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

CONFIGS = [
    dict(),
    dict(num_layers=2, bidirectional=True),
    dict(num_layers=2, batch_first=True),
    dict(bias=False),
    dict(peephole=False),
    dict(activation="identity"),
]


def config_id(config):
    return "-".join(f"{k}{v}" for k, v in config.items()) or "default"


def export(module, args, dynamic_shapes, path, exporter="dynamo"):
    """Exports with the torch.export-based exporter, or the TorchScript-based one; returns the
    ONNX model and an ONNX Runtime session of it."""
    if exporter == "dynamo":
        program = torch.onnx.export(module.eval(), args, dynamo=True,
                                    dynamic_shapes=dynamic_shapes)
        program.save(str(path))
    else:
        names = [f"input{i}" for i in range(len(args))]
        axes = {name: {d: dim.__name__ for d, dim in dims.items()}
                for name, dims in zip(names, dynamic_shapes)}
        torch.onnx.export(module.eval(), args, str(path), dynamo=False, input_names=names,
                          dynamic_axes=axes)
    return onnx.load(str(path)), ort.InferenceSession(str(path))


def run_onnx(session, *inputs):
    """The session's outputs, as tensors, for the inputs the module took (in the export's
    order)."""
    feed = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
    return [torch.from_numpy(v) for v in session.run(None, feed)]


def lstm_nodes(model):
    return [node for node in model.graph.node if node.op_type == "LSTM"]


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_peephole_lstm_exports_to_onnx_lstm_with_peepholes(config, exporter, tmp_path):
    torch.manual_seed(0)
    module = tlstm.PeepholeLSTM(6, 8, **config)
    if config.get("peephole", True):
        with torch.no_grad():  # peephole weights start at zero: make them matter
            for name, p in module.named_parameters():
                if name.startswith("weight_c"):
                    p.uniform_(-0.5, 0.5)
    batch_first = config.get("batch_first", False)
    time_dim, batch_dim = (1, 0) if batch_first else (0, 1)
    x = torch.randn((3, 7, 6) if batch_first else (7, 3, 6))
    dims = {time_dim: torch.export.Dim("T", min=2), batch_dim: torch.export.Dim("B", min=2)}
    model, session = export(module, (x,), (dims,), tmp_path / "model.onnx", exporter)

    nodes = lstm_nodes(model)
    layers = config.get("num_layers", 1) * (2 if config.get("bidirectional") else 1)
    assert len(nodes) == layers, [n.op_type for n in model.graph.node]
    for node in nodes:  # inputs X, W, R, B, sequence_lens, initial_h, initial_c, P
        has_p = len(node.input) > 7 and node.input[7] != ""
        assert has_p == config.get("peephole", True), node.input

    for T, B in ((7, 3), (12, 5), (2, 2)):
        shape = (B, T, 6) if batch_first else (T, B, 6)
        xs = torch.randn(shape)
        with torch.no_grad():
            want, (h_n, c_n) = module(xs)
        got = run_onnx(session, xs)
        assert rel_err(got[0], want) <= 1e-5, (T, B)
        assert rel_err(got[1], h_n) <= 1e-5, (T, B)
        assert rel_err(got[2], c_n) <= 1e-5, (T, B)


class WithStateAndLengths(torch.nn.Module):
    """One layer run through the op with an initial state and per-sequence lengths, forward
    and reverse, as a bidirectional module runs a packed batch."""

    def __init__(self, reverse):
        super().__init__()
        self.lstm = tlstm.PeepholeLSTM(4, 5)
        self.reverse = reverse

    def forward(self, x, h0, c0, lengths):
        w = self.lstm._layer_weights(0, 0)
        return tlstm.ops.peephole_lstm_layer(x, h0, c0, **w, lengths=lengths,
                                             reverse=self.reverse)


@pytest.mark.parametrize("reverse", [False, True])
def test_initial_state_and_lengths_export(reverse, tmp_path):
    torch.manual_seed(1)
    module = WithStateAndLengths(reverse)
    with torch.no_grad():
        module.lstm.weight_ci_l0.uniform_(-0.5, 0.5)
        module.lstm.weight_co_l0.uniform_(-0.5, 0.5)
    args = (torch.randn(6, 4, 4), torch.randn(4, 5), torch.randn(4, 5), torch.tensor([6, 3, 5, 1]))
    B = torch.export.Dim("B", min=2)
    dims = ({0: torch.export.Dim("T", min=2), 1: B}, {0: B}, {0: B}, {0: B})
    _, session = export(module, args, dims, tmp_path / "model.onnx")
    for T, lengths in ((6, [6, 3, 5, 1]), (9, [2, 9, 4])):
        B_ = len(lengths)
        inputs = (torch.randn(T, B_, 4), torch.randn(B_, 5), torch.randn(B_, 5),
                  torch.tensor(lengths))
        with torch.no_grad():
            want = module(*inputs)
        for g, w in zip(run_onnx(session, *inputs), want):
            assert rel_err(g, w) <= 1e-5, (T, lengths)


@pytest.mark.parametrize("dynamo", [True, False])
def test_projection_is_refused_with_a_clear_error(dynamo, tmp_path):
    module = tlstm.PeepholeLSTM(4, 6, proj_size=3)
    with pytest.raises(Exception, match="proj_size > 0 cannot be exported to ONNX"):
        torch.onnx.export(module.eval(), (torch.randn(5, 2, 4),), str(tmp_path / "m.onnx"),
                          dynamo=dynamo)


# -- the tensorized LSTM: one Loop over the steps, of standard ops (dynamo=True only) ----------

TENSORIZED_CONFIGS = [
    dict(depth=3),
    dict(depth=1),
    dict(depth=2, kernel_size=5),
    dict(depth=4, memory_conv=False, feedback=False),
    dict(depth=3, channel_norm=False, bias=False),
    dict(depth=2, kernel_size=5, proj_size=3, batch_first=True),
    dict(depth=3, flush=False),
    dict(depth=3, tensor_dim=3),
    dict(depth=2, kernel_size=5, feedback=False, tensor_dim=3),
    dict(depth=1, tensor_dim=3, flush=False),
]


class TensorizedWithState(torch.nn.Module):
    """A TensorizedLSTM given an initial state, with or without flush; returns the output and
    the state."""

    def __init__(self, flush=True, **config):
        super().__init__()
        self.lstm = tlstm.TensorizedLSTM(6, 8, **config)
        self.flush = flush

    def forward(self, x, h0, c0):
        output, (h_n, c_n) = self.lstm(x, (h0, c0), flush=self.flush)
        return output, h_n, c_n


def randomize_norms(module):
    """Channel-norm gains start at 0.5 and offsets at 0: make every one matter."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("norm_"):
                p.uniform_(0.2, 1.0) if name == "norm_weight" else p.uniform_(-0.3, 0.3)


def non_standard_ops(model):
    return {(node.domain, node.op_type) for node in model.graph.node
            if node.domain not in ("", "ai.onnx")}


@pytest.mark.parametrize("config", TENSORIZED_CONFIGS, ids=config_id)
def test_tensorized_lstm_exports_as_a_loop(config, tmp_path):
    torch.manual_seed(0)
    module = TensorizedWithState(**config)
    randomize_norms(module)
    lstm = module.lstm
    batch_first = lstm.batch_first
    time_dim, batch_dim = (1, 0) if batch_first else (0, 1)
    state = (3, *lstm.state_shape)
    args = (torch.randn((3, 7, 6) if batch_first else (7, 3, 6)), torch.randn(state),
            torch.randn(state))
    B = torch.export.Dim("B", min=2)
    dims = ({time_dim: torch.export.Dim("T", min=2), batch_dim: B}, {0: B}, {0: B})
    model, session = export(module, args, dims, tmp_path / "model.onnx")
    assert "Loop" in {node.op_type for node in model.graph.node}
    assert not non_standard_ops(model)

    for T, B_ in ((7, 3), (12, 5), (2, 2)):
        inputs = (torch.randn((B_, T, 6) if batch_first else (T, B_, 6)),
                  torch.randn(B_, *lstm.state_shape), torch.randn(B_, *lstm.state_shape))
        with torch.no_grad():
            want = module(*inputs)
        got = run_onnx(session, *inputs)
        assert len(got) == 3
        for g, w in zip(got, want):
            assert rel_err(g, w) <= 1e-5, (T, B_)

    # The bound can fail: a weight moved by 1e-3 after the export takes the module away.
    with torch.no_grad():
        lstm.weight_hh.add_(1e-3 * torch.randn_like(lstm.weight_hh))
        want = module(*inputs)
    assert rel_err(run_onnx(session, *inputs)[1], want[1]) > 1e-5


class TensorizedWithLengths(torch.nn.Module):
    """The op with per-sequence lengths, as the module runs a packed batch."""

    def __init__(self, flush):
        super().__init__()
        self.lstm = tlstm.TensorizedLSTM(4, 5, depth=3)
        self.flush = flush

    def forward(self, x, h0, c0, lengths):
        m = self.lstm
        return tlstm.ops.tensorized_lstm_sequence(
            x, h0, c0, m.weight_ih, m.bias_ih, m.weight_hh, m.bias_hh, m.norm_weight,
            m.norm_bias, lengths, m.depth, m.kernel_size, m.feedback, m.memory_conv, self.flush)


@pytest.mark.parametrize("flush", [True, False])
def test_tensorized_lstm_lengths_export(flush, tmp_path):
    torch.manual_seed(2)
    module = TensorizedWithLengths(flush)
    randomize_norms(module)
    P = module.lstm.rows
    args = (torch.randn(6, 4, 4), torch.randn(4, P, 5), torch.randn(4, P, 5),
            torch.tensor([6, 3, 5, 1]))
    B = torch.export.Dim("B", min=2)
    dims = ({0: torch.export.Dim("T", min=2), 1: B}, {0: B}, {0: B}, {0: B})
    _, session = export(module, args, dims, tmp_path / "model.onnx")
    for T, lengths in ((6, [6, 3, 5, 1]), (9, [2, 9, 4]), (5, [0, 5])):
        B_ = len(lengths)
        inputs = (torch.randn(T, B_, 4), torch.randn(B_, P, 5), torch.randn(B_, P, 5),
                  torch.tensor(lengths))
        with torch.no_grad():
            want = module(*inputs)
        for g, w in zip(run_onnx(session, *inputs), want):
            assert rel_err(g, w) <= 1e-5, (T, lengths)


class TensorizedOnly(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = tlstm.TensorizedLSTM(4, 5, depth=2)

    def forward(self, x):
        return self.lstm(x)[0]


class TensorizedPacked(TensorizedOnly):
    def forward(self, x, lengths):
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        return torch.nn.utils.rnn.pad_packed_sequence(self.lstm(packed)[0])[0]


def test_tensorized_lstm_torchscript_export_is_refused(tmp_path):
    with pytest.raises(NotImplementedError, match="Use torch.onnx.export\\(..., dynamo=True\\)"):
        torch.onnx.export(TensorizedOnly().eval(), (torch.randn(5, 2, 4),),
                          str(tmp_path / "m.onnx"), dynamo=False)


def test_tensorized_lstm_packed_export_is_refused(tmp_path):
    with pytest.raises(Exception, match="passes it a PackedSequence is not supported"):
        torch.onnx.export(TensorizedPacked().eval(),
                          (torch.randn(6, 3, 4), torch.tensor([6, 2, 4])), dynamo=True)


def test_tensorized_lstm_exports_in_float64(tmp_path):
    """No Conv in the step (ONNX Runtime has none in float64 on the CPU): float64 runs too, and
    agrees to float64's precision."""
    torch.manual_seed(3)
    module = TensorizedOnly().double()
    randomize_norms(module)
    dims = ({0: torch.export.Dim("T", min=2), 1: torch.export.Dim("B", min=2)},)
    _, session = export(module, (torch.randn(5, 2, 4, dtype=torch.float64),), dims,
                        tmp_path / "model.onnx")
    for T, B in ((5, 2), (8, 3)):
        x = torch.randn(T, B, 4, dtype=torch.float64)
        with torch.no_grad():
            want = module(x)
        assert rel_err(run_onnx(session, x)[0], want) <= 1e-10, (T, B)
