"""Smaller drop-in points for code written around nn.LSTM: the _flat_weights lists that code
inspecting LSTM weights reads, convert_lstms for existing models, and a hand-built
PackedSequence whose data does not match its batch_sizes."""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

import tlstm


@pytest.mark.parametrize("kwargs", [dict(num_layers=2, bidirectional=True, proj_size=3),
                                    dict(bias=False), dict(peephole=False)])
def test_flat_weights_name_every_weight_in_nn_lstm_order(kwargs):
    module = tlstm.PeepholeLSTM(4, 6, **kwargs)
    peephole = kwargs.get("peephole", True)
    lstm = nn.LSTM(4, 6, **{k: v for k, v in kwargs.items() if k != "peephole"})
    names = module._flat_weights_names
    assert [n for n in names if not n.startswith(("weight_ci", "weight_cf", "weight_co"))] == \
        lstm._flat_weights_names
    assert sorted(names) == sorted(dict(module.named_parameters()))
    assert all(w is getattr(module, n) for n, w in zip(names, module._flat_weights))
    assert any(n.startswith("weight_ci") for n in names) == peephole


def test_flat_weights_follow_a_parametrization():
    module = tlstm.PeepholeLSTM(3, 4)
    torch.nn.utils.parametrize.register_parametrization(module, "weight_hh_l0", nn.Tanh())
    index = module._flat_weights_names.index("weight_hh_l0")
    assert torch.equal(module._flat_weights[index], module.weight_hh_l0)
    assert not isinstance(module._flat_weights[index], nn.Parameter)


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(5, 8), nn.Tanh())
        self.lstm = nn.LSTM(8, 6, num_layers=2, bidirectional=True)
        self.heads = nn.ModuleList([nn.LSTM(12, 3), nn.Linear(12, 2)])

    def forward(self, x):
        y, _ = self.lstm(self.encoder(x))
        return self.heads[0](y)[0], self.heads[1](y)


def test_convert_lstms_swaps_every_nn_lstm_and_keeps_the_outputs():
    torch.manual_seed(0)
    model = Tagger()
    x = torch.randn(7, 2, 5)
    with torch.no_grad():
        before = model(x)
    assert tlstm.convert_lstms(model) is model
    assert isinstance(model.lstm, tlstm.PeepholeLSTM) and isinstance(model.heads[0],
                                                                     tlstm.PeepholeLSTM)
    assert not any(type(m) is nn.LSTM for m in model.modules())
    with torch.no_grad():
        after = model(x)
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert hasattr(model.lstm, "weight_ci_l1_reverse")  # the peepholes are there, to train


def test_convert_lstms_of_an_lstm_returns_its_replacement():
    lstm = nn.LSTM(3, 4)
    converted = tlstm.convert_lstms(lstm, peephole=False)
    assert isinstance(converted, tlstm.PeepholeLSTM) and not converted.peephole


@pytest.mark.parametrize("cell", ["peephole", "tensorized"])
def test_packed_data_that_does_not_match_batch_sizes_is_named(cell):
    module = tlstm.PeepholeLSTM(3, 4) if cell == "peephole" else tlstm.TensorizedLSTM(3, 4, 2)
    packed = PackedSequence(torch.randn(6, 3), torch.tensor([3, 2, 2]))  # sums to 7
    with pytest.raises(RuntimeError, match="data has 6 rows, but its batch_sizes add up to 7"):
        module(packed)


@pytest.mark.parametrize("cls,args", [
    (tlstm.PeepholeLSTM, (3, 4)), (tlstm.reference.PeepholeLSTM, (3, 4)),
    (tlstm.TensorizedLSTM, (3, 4, 2)), (tlstm.reference.TensorizedLSTM, (3, 4, 2)),
])
def test_an_unknown_keyword_names_the_class_the_user_built(cls, args):
    """As nn.LSTM's message names LSTM, not the base class that takes its arguments."""
    with pytest.raises(TypeError, match=rf"^{cls.__name__}\.__init__\(\) got an unexpected "
                                        r"keyword argument 'forget_bias'$"):
        cls(*args, forget_bias=1.0)


@pytest.mark.parametrize("cls,args", [
    (tlstm.PeepholeLSTM, (3,)), (tlstm.reference.PeepholeLSTM, (3,)),
    (tlstm.TensorizedLSTM, (3, 4)), (tlstm.reference.TensorizedLSTM, (3, 4)),
])
def test_a_missing_or_extra_argument_names_the_class_the_user_built(cls, args):
    """Python's own argument errors (a missing depth, too many positional arguments) name the
    public class too, not the base class whose __init__ the classes share."""
    with pytest.raises(TypeError, match=rf"^{cls.__name__}\.__init__\(\) missing 1 required "):
        cls(*args)
    with pytest.raises(TypeError, match=rf"^{cls.__name__}\.__init__\(\) takes from "):
        cls(*args, *range(20))
