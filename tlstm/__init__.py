"""tlstm: fused CPU and CUDA kernels for the peephole LSTM and the tensorized LSTM.

    tlstm.PeepholeLSTM      drop-in for torch.nn.LSTM with peephole connections
    tlstm.TensorizedLSTM    the tensorized LSTM: depth merged into time
    tlstm.convert_lstms     every nn.LSTM of a model made a PeepholeLSTM (same outputs)
    tlstm.reference         pure-PyTorch references of the same modules
    tlstm.ops               the registered ops (torch.ops.tlstm.*) behind them
    tlstm.functional        the cells as functions of tensors
    tlstm.onnx              their export to ONNX (ONNX's LSTM with peepholes; a Loop for the tLSTM)
"""
from . import functional, onnx, ops, reference  # noqa: F401
from .modules import PeepholeLSTM, TensorizedLSTM, convert_lstms

onnx.register()  # torch.onnx.export of both modules, where onnxscript is installed

__all__ = ["PeepholeLSTM", "TensorizedLSTM", "convert_lstms", "functional", "ops", "reference"]
__version__ = "0.1.0"
