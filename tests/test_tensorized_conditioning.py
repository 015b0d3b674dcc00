"""The tLSTM's default initialisation trains at depth: gradients do not grow back in time.

With the channel norms' gains at 1, a gradient grew by several percent per step back through
time at initialisation at depth 3 and more, so that the first positions of a chunk got gradients
tens of times the others and float32 gradients drifted from float64 (docs/cells.md, section 5).
The gains now start at 0.5. Measured on the float64 reference, which the kernels match."""
import math

import pytest
import torch

import tlstm
from helpers import rel_err

F64 = torch.float64


def growth_per_step(module, seed, T=64, B=4):
    """How much |d y_{T-1} / d x_{T-1-lag}| grows per step of lag, from lags 8..15 to 56..63."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, module.input_size, generator=g, dtype=F64, requires_grad=True)
    y, _ = module(x)
    direction = torch.randn(y[-1].shape, generator=g, dtype=F64)
    (grad,) = torch.autograd.grad((y[-1] * direction).sum(), x)
    per_step = grad.norm(dim=(1, 2))
    near, far = per_step[T - 16:T - 8].mean(), per_step[:8].mean()
    return (far / near).item() ** (1 / 48)


@pytest.mark.parametrize("depth", [3, 5])
def test_gradients_do_not_grow_back_in_time_at_initialisation(depth):
    """Geometric mean over three initialisations: below 0.95 per step (with gains of 1 it is
    0.98 at depth 3 and 0.97 at depth 5 in this small configuration, 1.06-1.09 at M=64..128;
    with 0.5, 0.89 at both depths)."""
    growth = []
    for seed in range(3):
        torch.manual_seed(seed)
        module = tlstm.reference.TensorizedLSTM(16, 32, depth=depth, dtype=F64)
        growth.append(growth_per_step(module, seed + 100))
    mean = math.exp(sum(map(math.log, growth)) / len(growth))
    assert mean < 0.95, f"gradient growth per step {growth}"


def test_float32_gradients_agree_with_float64_at_initialisation():
    """The fused module in float32 against the float64 reference, default initialisation,
    depth 3, T=128: within the float32 bound (with gains of 1, 3.2e-5 here, and 1e-3 to 2e-2
    at M=64..128)."""
    torch.manual_seed(7)
    fused = tlstm.TensorizedLSTM(16, 32, depth=3)
    ref = tlstm.reference.TensorizedLSTM(16, 32, depth=3, dtype=F64)
    ref.load_state_dict(fused.state_dict())
    g = torch.Generator().manual_seed(8)
    x64 = torch.randn(128, 4, 16, generator=g, dtype=F64, requires_grad=True)
    x32 = x64.detach().float().requires_grad_()
    upstream = torch.randn(128, 4, 32, generator=g, dtype=F64)
    grads = {}
    for name, module, x in (("fused", fused, x32), ("reference", ref, x64)):
        y, _ = module(x)
        loss = (y * upstream.to(y.dtype)).sum()
        grads[name] = torch.autograd.grad(loss, [x, *module.parameters()])
    for got, want in zip(grads["fused"], grads["reference"]):
        assert rel_err(got, want) <= 1e-5
