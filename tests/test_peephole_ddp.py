"""DistributedDataParallel over 2 CPU processes (gloo): each rank runs half of a batch; the
averaged gradients equal the gradient of the mean loss over the full batch in one process."""
import datetime
import os
import socket
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import TOL, randn, rel_err

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KWARGS = dict(input_size=3, hidden_size=6, num_layers=2, bidirectional=True, proj_size=2,
              batch_first=True)
B, T = 6, 5
WORLD = 2
TIMEOUT_S = 120


def _model():
    import tlstm

    from conftest import randomize_

    model = tlstm.PeepholeLSTM(dtype=torch.float64, **KWARGS)
    randomize_(model, 17)
    return model


def _data():
    x = randn((B, T, 3), 1, torch.float64)
    upstream = randn((B, T, 4), 2, torch.float64)  # [B, T, 2 * proj_size]
    return x, upstream


def _loss(model, x, upstream):
    """Mean over the batch of a per-sequence loss (random linear functional of the output)."""
    out, (h, c) = model(x)
    per_seq = (out * upstream).sum(dim=(1, 2)) + h.pow(2).sum(dim=(0, 2)) + c.sum(dim=(0, 2))
    return per_seq.mean()


def _worker(rank, port, out_dir):
    sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))
    sys.path.insert(0, REPO_ROOT)
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
        timeout=datetime.timedelta(seconds=TIMEOUT_S),
    )
    try:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(_model())
        x, upstream = _data()
        part = slice(rank * B // WORLD, (rank + 1) * B // WORLD)
        loss = _loss(model, x[part], upstream[part])
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
def test_ddp_gradients_equal_full_batch(tmp_path):
    ctx = mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=False)
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

    model = _model()
    x, upstream = _data()
    _loss(model, x, upstream).backward()
    want = {n: p.grad for n, p in model.named_parameters()}
    assert any(n.startswith("weight_ci") for n in want)
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"grads_{rank}.pt")
        assert set(got) == set(want)
        for name in want:
            err = rel_err(got[name], want[name])
            assert err <= TOL[torch.float64], (rank, name, err)
