"""DistributedDataParallel over 2 CPU processes (gloo), for both cells: each rank runs half of a
batch; the averaged gradients equal the gradient of the mean loss over the full batch in one
process."""
import datetime
import os
import socket
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from helpers import TOL, randn, rel_err

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KWARGS = {
    "peephole": dict(input_size=3, hidden_size=6, num_layers=2, bidirectional=True, proj_size=2,
                     batch_first=True),
    "tensorized": dict(input_size=3, hidden_size=4, depth=3, proj_size=2, batch_first=True),
}
OUTPUT_SIZE = {"peephole": 4, "tensorized": 2}  # 2 directions x proj_size; proj_size
STATE_BATCH_DIM = {"peephole": 1, "tensorized": 0}
B, T = 6, 5
WORLD = 2
TIMEOUT_S = 120


def _model(cell):
    import tlstm

    from helpers import randomize_
    from tensorized_helpers import randomize_tensorized_

    if cell == "peephole":
        model = tlstm.PeepholeLSTM(dtype=torch.float64, **KWARGS[cell])
        randomize_(model, 17)
    else:
        model = tlstm.TensorizedLSTM(dtype=torch.float64, **KWARGS[cell])
        randomize_tensorized_(model, 17)
    return model


def _data(cell):
    x = randn((B, T, 3), 1, torch.float64)
    upstream = randn((B, T, OUTPUT_SIZE[cell]), 2, torch.float64)
    return x, upstream


def _loss(cell, model, x, upstream):
    """Mean over the batch of a per-sequence loss (random linear functional of the output)."""
    out, (h, c) = model(x)
    h, c = (s.movedim(STATE_BATCH_DIM[cell], 0).flatten(1) for s in (h, c))
    per_seq = (out * upstream).sum(dim=(1, 2)) + h.pow(2).sum(dim=1) + c.sum(dim=1)
    return per_seq.mean()


def _worker(rank, port, out_dir, cell):
    sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))
    sys.path.insert(0, REPO_ROOT)
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
        timeout=datetime.timedelta(seconds=TIMEOUT_S),
    )
    try:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(_model(cell))
        x, upstream = _data(cell)
        part = slice(rank * B // WORLD, (rank + 1) * B // WORLD)
        loss = _loss(cell, model, x[part], upstream[part])
        loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in model.module.named_parameters()}
        torch.save(grads, os.path.join(out_dir, f"grads_{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
@pytest.mark.parametrize("cell", ["peephole", "tensorized"])
def test_ddp_gradients_equal_full_batch(cell, tmp_path):
    ctx = mp.spawn(_worker, args=(_free_port(), str(tmp_path), cell), nprocs=WORLD, join=False)
    deadline = time.monotonic() + TIMEOUT_S + 60
    try:
        while not ctx.join(timeout=5):
            if time.monotonic() > deadline:
                pytest.fail("DDP workers did not finish in time")
    finally:
        for p in ctx.processes:  # only the processes this test started
            if p.is_alive():
                p.terminate()
                p.join(5)

    model = _model(cell)
    x, upstream = _data(cell)
    _loss(cell, model, x, upstream).backward()
    want = {n: p.grad for n, p in model.named_parameters()}
    assert any(n.startswith("weight_ci" if cell == "peephole" else "norm_weight") for n in want)
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"grads_{rank}.pt")
        assert set(got) == set(want)
        for name in want:
            err = rel_err(got[name], want[name])
            assert err <= TOL[torch.float64], (rank, name, err)
