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
        got = session.run(None, {session.get_inputs()[0].name: xs.numpy()})
        assert rel_err(torch.from_numpy(got[0]), want) <= 1e-5, (T, B)
        assert rel_err(torch.from_numpy(got[1]), h_n) <= 1e-5, (T, B)
        assert rel_err(torch.from_numpy(got[2]), c_n) <= 1e-5, (T, B)


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
        feed = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
        got = session.run(None, feed)
        for g, w in zip(got, want):
            assert rel_err(torch.from_numpy(g), w) <= 1e-5, (T, lengths)


@pytest.mark.parametrize("dynamo", [True, False])
def test_projection_is_refused_with_a_clear_error(dynamo, tmp_path):
    module = tlstm.PeepholeLSTM(4, 6, proj_size=3)
    with pytest.raises(Exception, match="proj_size > 0 cannot be exported to ONNX"):
        torch.onnx.export(module.eval(), (torch.randn(5, 2, 4),), str(tmp_path / "m.onnx"),
                          dynamo=dynamo)
