"""Forward-mode AD through the fused modules is refused, never silently zero.

The ops have reverse-mode formulas only. Forward AD itself refuses them, but torch.func.jvp and
jacfwd ran them and returned a zero tangent; tlstm.ops now refuses those transforms with an
error that names the reference module, which supports them. vmap keeps working."""
import pytest
import torch

import tlstm

F64 = torch.float64
MODULES = {
    "PeepholeLSTM": lambda: tlstm.PeepholeLSTM(3, 4, num_layers=2, dtype=F64),
    "TensorizedLSTM": lambda: tlstm.TensorizedLSTM(3, 4, depth=3, dtype=F64),
}


@pytest.fixture(params=list(MODULES))
def cell(request):
    torch.manual_seed(0)
    return request.param, MODULES[request.param]()


def _inputs(seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(5, 2, 3, generator=g, dtype=F64),
            torch.randn(5, 2, 3, generator=g, dtype=F64))


@pytest.mark.parametrize("transform", ["jvp", "jacfwd", "vmap_of_jvp"])
def test_jvp_transforms_raise_naming_the_reference(cell, transform):
    name, module = cell
    x, v = _inputs(1)

    def f(xi):
        return module(xi)[0]

    run = {
        "jvp": lambda: torch.func.jvp(f, (x,), (v,)),
        "jacfwd": lambda: torch.func.jacfwd(f)(x),
        "vmap_of_jvp": lambda: torch.func.vmap(
            lambda xi, vi: torch.func.jvp(f, (xi,), (vi,))[1], in_dims=1)(x, v),
    }[transform]
    with pytest.raises(NotImplementedError, match=f"tlstm.{name} has no forward-mode AD.*"
                                                  f"tlstm.reference.{name}"):
        run()


def test_the_reference_has_the_tangent_the_fused_module_refuses(cell):
    """What the error sends users to works: the reference's jvp equals a finite difference."""
    name, module = cell
    ref = getattr(tlstm.reference, name)(3, 4, dtype=F64, **(
        {"num_layers": 2} if name == "PeepholeLSTM" else {"depth": 3}))
    ref.load_state_dict(module.state_dict())
    x, v = _inputs(2)
    _, tangent = torch.func.jvp(lambda xi: ref(xi)[0], (x,), (v,))
    eps = 1e-6
    with torch.no_grad():
        fd = (module(x + eps * v)[0] - module(x - eps * v)[0]) / (2 * eps)
    assert tangent.norm() > 0
    assert torch.allclose(tangent, fd, rtol=1e-6, atol=1e-8)


def test_vmap_still_runs(cell):
    _, module = cell
    x, _ = _inputs(3)
    with torch.no_grad():
        batched = torch.func.vmap(lambda xi: module(xi)[0], in_dims=1, out_dims=1)(x)
        looped = torch.stack([module(x[:, b])[0] for b in range(x.size(1))], dim=1)
    assert torch.allclose(batched, looped, rtol=1e-12, atol=1e-12)
