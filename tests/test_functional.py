"""tlstm.functional: the cells as functions of tensors give the modules' results, and
torch.func.grad over them gives autograd's gradients."""
import torch

import tlstm
import tlstm.functional as TF
from helpers import TOL, rel_err

F64 = torch.float64


def test_peephole_layer_function_equals_the_module_and_differentiates():
    torch.manual_seed(0)
    module = tlstm.PeepholeLSTM(3, 4, dtype=F64)
    w = module._layer_weights(0, 0)
    x, h0, c0 = torch.randn(5, 2, 3, dtype=F64), torch.zeros(2, 4, dtype=F64), torch.zeros(
        2, 4, dtype=F64)
    out, h, c = TF.peephole_lstm_layer(x, h0, c0, **w)
    want, (h_w, c_w) = module(x)
    assert rel_err(out, want) <= TOL[F64] and rel_err(h, h_w[0]) <= TOL[F64]
    got = torch.func.grad(lambda xi: TF.peephole_lstm_layer(xi, h0, c0, **w)[0].pow(2).sum())(x)
    xi = x.clone().requires_grad_()
    (expected,) = torch.autograd.grad(module(xi)[0].pow(2).sum(), xi)
    assert rel_err(got, expected) <= TOL[F64]


def test_tensorized_sequence_function_equals_the_module():
    torch.manual_seed(1)
    module = tlstm.TensorizedLSTM(3, 4, depth=2, dtype=F64)
    p = dict(module.named_parameters())
    x = torch.randn(5, 2, 3, dtype=F64)
    zeros = torch.zeros(2, module.rows, 4, dtype=F64)
    out, h, c = TF.tensorized_lstm_sequence(
        x, zeros, zeros, p["weight_ih"], p["bias_ih"], p["weight_hh"], p["bias_hh"],
        p["norm_weight"], p["norm_bias"], None, 2, 3, True, True, True)
    want, (h_w, c_w) = module(x)
    assert rel_err(out, want) <= TOL[F64] and rel_err(c, c_w) <= TOL[F64]
