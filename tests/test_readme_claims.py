"""What README.md promises users about the modules beyond the cell itself, each held by a test:

- a PackedSequence with int32 batch_sizes runs (nn.LSTM refuses it) and gives the int64 results;
- a bias set to None runs as a zero bias (nn.LSTM refuses it);
- torch.func.vmap works;
- forward-mode AD and torch.func.jvp / jacfwd raise (no formulas for them) rather than return
  wrong numbers; torch.func.grad, jacrev and vmap(grad) (per-sample gradients) work, nested
  grad is refused as double backward is;
- a module traced with torch.jit.trace trains whichever grad mode it was traced in;
- the tLSTM takes packed input built with enforce_sorted=True;
- ``python -m tlstm bench``: its parity report, its exit status and its --json result file
  (keys as documented in benchmarks/README.md, "Result files").
"""
import datetime
import json
import os
import platform
import re

import warnings

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import tlstm
from helpers import TOL, assert_results_close, assert_results_equal, randn, rel_err
from tensorized_helpers import F64, make_tlstm

FUSED = {"peephole": tlstm.PeepholeLSTM, "tensorized": tlstm.TensorizedLSTM}
REFERENCE = {"peephole": tlstm.reference.PeepholeLSTM,
             "tensorized": tlstm.reference.TensorizedLSTM}
KWARGS = {"peephole": dict(input_size=3, hidden_size=4, num_layers=2, bidirectional=True),
          "tensorized": dict(input_size=3, hidden_size=4, depth=3)}


def _pair(cell, seed=0):
    """A float64 fused module with random weights and the reference with the same weights."""
    fused = make_tlstm(FUSED[cell], F64, seed, **KWARGS[cell])
    ref = REFERENCE[cell](dtype=F64, **KWARGS[cell])
    ref.load_state_dict(fused.state_dict())
    return fused, ref


def _run(module, inp, params, seed=5):
    """Output data, final states and the gradients of a random loss for the input data and
    every parameter in `params`."""
    out, (h, c) = module(inp)
    out = out.data if isinstance(out, PackedSequence) else out
    data = inp.data if isinstance(inp, PackedSequence) else inp
    loss = sum((t * randn(t.shape, seed + k)).sum() for k, t in enumerate((out, h, c)))
    names = list(params)
    grads = torch.autograd.grad(loss, [data] + [params[n] for n in names])
    res = {"output": out.detach(), "h_n": h.detach(), "c_n": c.detach()}
    res.update(zip(["grad_input"] + ["grad_" + n for n in names], grads))
    return res


# ---- int32 batch_sizes -------------------------------------------------------------------------


@pytest.mark.parametrize("cell", list(FUSED))
def test_int32_batch_sizes_give_the_int64_results(cell):
    fused, ref = _pair(cell, seed=1)
    x = randn((6, 3, 3), 2)
    packed = pack_padded_sequence(x, torch.tensor([6, 2, 4]), enforce_sorted=False)
    assert packed.batch_sizes.dtype == torch.int64
    as_int32 = PackedSequence(packed.data.detach().requires_grad_(),
                              packed.batch_sizes.to(torch.int32), packed.sorted_indices,
                              packed.unsorted_indices)
    packed = PackedSequence(packed.data.detach().requires_grad_(), *packed[1:])
    params = dict(fused.named_parameters())
    want = _run(fused, packed, params)
    got = _run(fused, as_int32, params)
    assert_results_equal(got, want, f"{cell} int32 batch_sizes")
    ref_packed = PackedSequence(packed.data.detach().requires_grad_(), *packed[1:])
    assert_results_close(got, _run(ref, ref_packed, dict(ref.named_parameters())), TOL[F64],
                         f"{cell} int32 batch_sizes against the reference")


# ---- a bias set to None ------------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_peephole_bias_set_to_none_runs_as_zero_bias(impl):
    """bias_hh_l0 and bias_ih_l1_reverse set to None: the results (and every remaining
    gradient) are those of the same module with these biases zero."""
    cls = tlstm.PeepholeLSTM if impl == "fused" else tlstm.reference.PeepholeLSTM
    kwargs = KWARGS["peephole"]
    zeroed = make_tlstm(cls, F64, 3, **kwargs)
    none = cls(dtype=F64, **kwargs)
    none.load_state_dict(zeroed.state_dict())
    with torch.no_grad():
        zeroed.bias_hh_l0.zero_()
        zeroed.bias_ih_l1_reverse.zero_()
    none.bias_hh_l0 = None
    none.bias_ih_l1_reverse = None
    assert "bias_hh_l0" not in dict(none.named_parameters())
    x = randn((5, 2, 3), 4)
    params_none = dict(none.named_parameters())
    params_zero = {n: p for n, p in zeroed.named_parameters() if n in params_none}
    got = _run(none, x.clone().requires_grad_(), params_none)
    want = _run(zeroed, x.clone().requires_grad_(), params_zero)
    assert_results_close(got, want, TOL[F64], f"{impl} with biases set to None")
    # and they are not simply ignored: the zeroed biases were not zero before
    assert rel_err(cls(dtype=F64, **kwargs).bias_hh_l0, torch.zeros(16, dtype=F64)) > 0


# ---- torch.func ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", list(FUSED))
def test_vmap_equals_a_loop(cell):
    fused, _ = _pair(cell, seed=5)
    xs = randn((3, 5, 2, 3), 6)  # 3 independent [T, B, I] inputs
    out, (h, c) = torch.func.vmap(fused)(xs)
    for k in range(3):
        o, (hk, ck) = fused(xs[k])
        assert_results_close({"o": out[k], "h": h[k], "c": c[k]}, {"o": o, "h": hk, "c": ck},
                             TOL[F64], f"{cell} vmap, slice {k}")


@pytest.mark.parametrize("transform", ["jacrev", "grad"])
@pytest.mark.parametrize("cell", list(FUSED))
def test_reverse_mode_functorch_transforms_equal_autograd(cell, transform):
    fused, _ = _pair(cell, seed=7)
    x = randn((4, 2, 3), 8)
    if transform == "grad":
        got = torch.func.grad(lambda xi: (fused(xi)[0] ** 2).sum())(x)
        xi = x.clone().requires_grad_()
        (want,) = torch.autograd.grad((fused(xi)[0] ** 2).sum(), xi)
    else:
        got = torch.func.jacrev(lambda xi: fused(xi)[0])(x)
        want = torch.autograd.functional.jacobian(lambda xi: fused(xi)[0], x)
    assert rel_err(got, want) <= TOL[F64]


@pytest.mark.parametrize("cell", list(FUSED))
def test_per_sample_gradients_equal_a_loop_over_samples(cell):
    """vmap(grad(...)) through functional_call, as differentially private training computes
    per-sample gradients: each equals the gradient of that sample run alone."""
    fused, _ = _pair(cell, seed=20)
    params = {k: v.detach() for k, v in fused.named_parameters()}
    x = randn((5, 3, 3), 21)
    y = randn((5, 3, fused(x[:, :1])[0].size(-1)), 22)

    def loss(p, xi, yi):
        out, _ = torch.func.functional_call(fused, p, (xi.unsqueeze(1),))
        return ((out.squeeze(1) - yi) ** 2).sum()

    with warnings.catch_warnings():  # the ops have no batching rule: vmap loops over samples
        warnings.simplefilter("ignore", UserWarning)
        per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 1, 1))(params, x, y)
    for b in range(x.size(1)):
        out, _ = fused(x[:, b:b + 1])
        grads = torch.autograd.grad(((out.squeeze(1) - y[:, b]) ** 2).sum(),
                                    list(fused.parameters()))
        for (name, _), want in zip(fused.named_parameters(), grads):
            assert rel_err(per_sample[name][b], want) <= TOL[F64], (name, b)


@pytest.mark.parametrize("cell", list(FUSED))
def test_nested_grad_is_refused_as_double_backward(cell):
    fused, _ = _pair(cell, seed=23)
    x = randn((4, 2, 3), 24)

    def first(xi):
        return torch.func.grad(lambda v: (fused(v)[0] ** 2).sum())(xi).sum()

    with pytest.raises(RuntimeError, match="does not support double backward"):
        torch.func.grad(first)(x)


@pytest.mark.parametrize("cell", list(FUSED))
def test_forward_mode_ad_raises(cell):
    import torch.autograd.forward_ad as fwAD

    fused, _ = _pair(cell, seed=9)
    x = randn((4, 2, 3), 10)
    with fwAD.dual_level():
        dual = fwAD.make_dual(x, torch.ones_like(x))
        with pytest.raises(NotImplementedError, match="jvp function"):
            fused(dual)


@pytest.mark.parametrize("transform", ["jvp", "jacfwd"])
@pytest.mark.parametrize("cell", list(FUSED))
def test_jvp_and_jacfwd_raise_instead_of_a_zero_tangent(cell, transform):
    """torch.func.jvp and jacfwd raise tlstm's error naming the reference (which supports
    them, with a tangent that is not zero): a silent zero tangent is the one outcome that
    must not happen."""
    fused, ref = _pair(cell, seed=11)
    x, v = randn((4, 2, 3), 12), randn((4, 2, 3), 13)
    _, want = torch.func.jvp(lambda xi: ref(xi)[0], (x,), (v,))
    assert want.norm() > 0
    run = {"jvp": lambda: torch.func.jvp(lambda xi: fused(xi)[0], (x,), (v,)),
           "jacfwd": lambda: torch.func.jacfwd(lambda xi: fused(xi)[0])(x)}[transform]
    name = "PeepholeLSTM" if cell == "peephole" else "TensorizedLSTM"
    with pytest.raises(NotImplementedError, match=rf"tlstm\.{name} has no forward-mode AD "
                                                  rf"formula.*tlstm\.reference\.{name}"):
        run()


# ---- traced under no_grad --------------------------------------------------------------------


@pytest.mark.parametrize("cell", list(FUSED))
def test_traced_modules_check_and_train_in_either_grad_mode(cell):
    """torch.jit.trace with its default check_trace=True, traced with or without grad: the
    traced module gives eager's outputs and, with grad, eager's gradients (a trace records
    whether the op saves for the backward as a constant, so it follows requires_grad)."""
    fused, _ = _pair(cell, seed=14)
    x = randn((4, 2, 3), 15)
    for grad_mode in (True, False):
        with torch.set_grad_enabled(grad_mode):
            traced = torch.jit.trace(fused, (x,))
        with torch.no_grad():
            assert rel_err(traced(x)[0], fused(x)[0]) <= TOL[F64]
        grads = []
        for module in (traced, fused):
            xi = x.clone().requires_grad_()
            out = module(xi)[0]
            grads.append(torch.autograd.grad((out * out).sum(), [xi, *fused.parameters()]))
        for got, want in zip(*grads):
            assert rel_err(got, want) <= TOL[F64]


# ---- the tLSTM with enforce_sorted=True --------------------------------------------------------


@pytest.mark.parametrize("with_state", [False, True], ids=["no_state", "state"])
def test_tensorized_packed_enforce_sorted(with_state):
    """Lengths sorted longest first, packed with enforce_sorted=True (no sorted/unsorted
    indices): the same results as enforce_sorted=False and as the reference."""
    fused, ref = _pair("tensorized", seed=16)
    x = randn((6, 3, 3), 17)
    lengths = torch.tensor([6, 4, 2])
    shape = (3, fused.rows, fused.hidden_size)
    state = (randn(shape, 18, scale=0.5), randn(shape, 19, scale=0.5)) if with_state else None
    results = {}
    for name, module, sorted_ in (("sorted", fused, True), ("unsorted", fused, False),
                                  ("reference", ref, True)):
        packed = pack_padded_sequence(x, lengths, enforce_sorted=sorted_)
        assert (packed.sorted_indices is None) == sorted_
        data = packed.data.detach().requires_grad_()
        leaves = [data]
        st = None
        if state is not None:
            st = tuple(s.clone().requires_grad_() for s in state)
            leaves += list(st)
        out, (h, c) = module(PackedSequence(data, *packed[1:]), st)
        loss = sum((t * randn(t.shape, 20 + k)).sum() for k, t in enumerate((out.data, h, c)))
        grads = torch.autograd.grad(loss, leaves + list(module.parameters()))
        results[name] = {"output": out.data.detach(), "h_n": h.detach(), "c_n": c.detach(),
                         **{f"grad{k}": g for k, g in enumerate(grads)}}
    assert_results_close(results["sorted"], results["unsorted"], TOL[F64], "sorted vs unsorted")
    assert_results_close(results["sorted"], results["reference"], TOL[F64], "vs reference")
    # and each sequence run alone, unpacked (a path that shares no packing code)
    padded, _ = pad_packed_sequence(PackedSequence(results["sorted"]["output"],
                                                   *pack_padded_sequence(x, lengths)[1:]))
    for b, n in enumerate(lengths.tolist()):
        st = None if state is None else tuple(s[b:b + 1] for s in state)
        with torch.no_grad():
            out, (h, c) = fused(x[:n, b:b + 1], st)
        assert_results_close({"output": padded[:n, b:b + 1], "h_n": results["sorted"]["h_n"][b],
                              "c_n": results["sorted"]["c_n"][b]},
                             {"output": out, "h_n": h[0], "c_n": c[0]}, TOL[F64],
                             f"sequence {b} alone")


# ---- python -m tlstm bench ---------------------------------------------------------------------

# The keys of a record, exactly as the README's result-file format documents them.
RECORD_KEYS = {"cell", "impl", "direction", "dtype", "T", "B", "I", "H", "layers", "L", "K",
               "ms_median", "ms_min", "ms_max", "repeats"}
RESULT_KEYS = {"device", "torch", "cuda", "cudnn", "commit", "date", "tf32", "records"}
PARITY_KEYS = {"cell", "case", "impl", "device", "max_rel_err", "bound", "ok"}


@pytest.fixture
def tiny_bench(monkeypatch):
    """The bench CLI with a tiny grid (one small configuration per cell) in place of the
    --quick grid, and a fixed commit name (no git call)."""
    from tlstm import bench

    def peephole_configs(device, quick):
        assert quick
        return [bench.Config("peephole", 5, 2, 3, 4)]

    def tensorized_configs(device, quick):
        assert quick
        return [bench.Config("tensorized", 5, 2, 3, 4, L=L, K=3) for L in (1, 2)]

    monkeypatch.setattr(bench, "peephole_configs", peephole_configs)
    monkeypatch.setattr(bench, "tensorized_configs", tensorized_configs)
    monkeypatch.setenv("TLSTM_BENCH_COMMIT", "0123456789abcdef")
    return bench


def _bench_cli(tmp_path, *extra):
    from tlstm.__main__ import main

    threads = torch.get_num_threads()
    try:
        return main(["bench", "--quick", "--device", "cpu", "--repeats", "2", "--warmup", "0",
                     "--no-progress", "--no-compile", "--json", str(tmp_path), *extra])
    finally:
        torch.set_num_threads(threads)


def test_bench_cli_parity_report_and_json_schema(tiny_bench, tmp_path, capsys):
    assert _bench_cli(tmp_path) == 0
    printed = capsys.readouterr().out
    # the parity report: both fused dtypes for every case, within the contract's bounds
    assert "parity against the float64 reference" in printed
    report = [line for line in printed.splitlines() if "max rel err" in line]
    assert len(report) == 2 * len(tiny_bench.PARITY_CASES)
    assert all(line.rstrip().endswith(" ok") for line in report), report
    files = os.listdir(tmp_path)
    today = datetime.date.today().strftime("%Y%m%d")
    assert len(files) == 1 and re.fullmatch(rf"[a-z0-9-]+-{today}-0123456\.json", files[0]), files
    with open(tmp_path / files[0]) as f:
        result = json.load(f)
    assert RESULT_KEYS <= set(result), sorted(RESULT_KEYS - set(result))
    assert result["commit"] == "0123456789abcdef" and result["tf32"] is False
    assert result["date"] == datetime.date.today().isoformat()
    assert result["torch"] == torch.__version__ and result["cudnn"] is None
    # the C library is left as users run it unless --hold-freed-memory
    assert result["malloc"] == "as is"
    assert "C library's freed memory: as is" in printed
    # the parity rows: each case, both dtypes, the contract's bounds, all ok
    rows = result["parity"]
    assert all(set(r) == PARITY_KEYS for r in rows)
    assert {(r["cell"], r["case"], r["impl"]) for r in rows} == {
        (cell, str(kw), impl) for cell, kw in tiny_bench.PARITY_CASES
        for impl in ("fused float64", "fused float32")}
    for r in rows:
        assert r["bound"] == {"fused float64": 1e-10, "fused float32": 1e-5}[r["impl"]]
        assert r["ok"] is True and 0 <= r["max_rel_err"] <= r["bound"], r
    # the records: keys exactly as documented, one per configuration, implementation and
    # direction, times that make sense
    records = result["records"]
    def keys(r):  # a tLSTM record also says which cell, 2-D or 3-D
        return RECORD_KEYS | ({"tensor_dim"} if r["cell"].startswith("tensorized") else set())

    assert all(set(r) == keys(r) for r in records), [sorted(set(r) ^ keys(r)) for r in records]
    assert {r["tensor_dim"] for r in records if r["cell"].startswith("tensorized")} <= {2, 3}
    seen = {(r["cell"], r["impl"], r["direction"], r["L"], r["layers"]) for r in records}
    for direction in ("fwd", "fwdbwd"):
        for impl in ("fused", "reference", "nn.LSTM"):
            assert ("peephole", impl, direction, None, 1) in seen
        for L in (1, 2):
            for impl in ("fused", "reference"):
                assert ("tensorized", impl, direction, L, 1) in seen
            # the stacked nn.LSTM baseline of the same depth: cell "lstm", layers = L
            assert ("lstm", "nn.LSTM", direction, None, L) in seen
    assert len(records) == len(seen) == 2 * (3 + 2 * 3)
    for r in records:
        assert r["dtype"] == "float32" and r["repeats"] == 2
        assert 0 < r["ms_min"] <= r["ms_median"] <= r["ms_max"]
        assert (r["K"] == 3) == (r["cell"] == "tensorized")


def test_bench_cli_hold_freed_memory(tiny_bench, tmp_path, capsys):
    assert _bench_cli(tmp_path, "--hold-freed-memory") == 0
    with open(tmp_path / os.listdir(tmp_path)[0]) as f:
        malloc = json.load(f)["malloc"]
    assert malloc == ("held" if platform.libc_ver()[0] == "glibc" else "as is")
    assert f"C library's freed memory: {malloc}" in capsys.readouterr().out


def test_bench_cli_fails_when_parity_fails(tiny_bench, tmp_path, capsys, monkeypatch):
    """A fused module off by 1e-3 fails the parity report: exit status 1, 'FAIL' and
    'PARITY FAILED', and ok: false in the result file."""

    class Off(tlstm.TensorizedLSTM):
        def forward(self, *args, **kwargs):
            out, state = super().forward(*args, **kwargs)
            return PackedSequence(out.data * 1.001, *out[1:]), state

    monkeypatch.setattr(tlstm, "TensorizedLSTM", Off)
    # one case of each cell is enough here (the full report runs in the test above)
    monkeypatch.setattr(tiny_bench, "PARITY_CASES", [tiny_bench.PARITY_CASES[1],
                                                     tiny_bench.PARITY_CASES[2]])
    assert _bench_cli(tmp_path, "--cells", "peephole") == 1
    captured = capsys.readouterr()
    assert "PARITY FAILED" in captured.err
    failed = [line for line in captured.out.splitlines() if line.rstrip().endswith("FAIL")]
    assert len(failed) == 2  # the tLSTM case, in float64 and float32
    with open(tmp_path / os.listdir(tmp_path)[0]) as f:
        rows = json.load(f)["parity"]
    assert [r["ok"] for r in rows] == [r["cell"] == "peephole" for r in rows]


def test_bench_quick_grid_is_a_subset_of_the_full_grid():
    """--quick times a non-empty part of the full grid, on each device."""
    from tlstm import bench

    for device in ("cpu", "cuda"):
        for configs in (bench.peephole_configs, bench.tensorized_configs):
            quick, full = configs(device, True), configs(device, False)
            assert quick and set(quick) <= set(full) and len(quick) < len(full)
