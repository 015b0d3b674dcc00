"""pytest's hooks and fixtures for the tests; the helpers they share are in tests/helpers.py
(and tests/tensorized_helpers.py)."""
from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile

# torch.compile's caches key a compiled graph by its code, not by what a custom op's shape
# function says: graphs compiled against another build of tlstm (another checkout, an older
# commit) would be reused with that build's output shapes. Each run compiles into a cache of its
# own, removed at the end, unless TORCHINDUCTOR_CACHE_DIR is set.
_OWN_INDUCTOR_CACHE = None
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    _OWN_INDUCTOR_CACHE = tempfile.mkdtemp(prefix="tlstm-tests-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = _OWN_INDUCTOR_CACHE

import pytest  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

# torch.compile's structured-trace logger emits DEBUG records that pytest would print (pages of
# them) with any failure report; keep them out of the root logger.
logging.getLogger("torch.__trace").propagate = False

from helpers import CUDA_OPS, cpu_and_cuda, fail_without_cuda_kernels  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "cuda: runs on a CUDA device; skipped without one (pytest -m cuda runs them "
        "all, as benchmarks/gpu_session.sh does)")


@pytest.fixture
def no_tf32():
    """float32 GEMMs in full float32 (TF32 would miss the 1e-5 contract); restores the
    previous settings."""
    prev = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev


@pytest.fixture(params=cpu_and_cuda())
def device(request, monkeypatch):
    """The device a test runs on, "cpu" or "cuda" (tests/helpers.py: cpu_and_cuda; a test may
    parametrize "device" itself, indirectly, with other params of the same form).

    For the CUDA params, "cuda-stepwise" and "cuda-persistent", it sets TLSTM_CUDA_RECURRENCE
    ("cuda" alone unsets it: the library chooses), turns TF32 off (no_tf32) and fails, rather
    than skips, where the build has no CUDA kernels. Everything is restored after the test."""
    name = request.param
    if name == "cpu":
        return "cpu"
    kind, _, recurrence = name.partition("-")
    assert kind == "cuda", name
    for op in CUDA_OPS:
        fail_without_cuda_kernels(op)
    if recurrence:
        monkeypatch.setenv("TLSTM_CUDA_RECURRENCE", recurrence)
    else:
        monkeypatch.delenv("TLSTM_CUDA_RECURRENCE", raising=False)
    request.getfixturevalue("no_tf32")
    return "cuda"


def pytest_make_parametrize_id(config, val, argname):
    """A bare number as a test id says nothing (test_opcheck_forward[0]): name it after its
    argument (case0, threads2, depth3)."""
    if isinstance(val, int) and not isinstance(val, bool):
        return f"{argname}{val}"
    return None


@pytest.fixture
def restore_threads():
    prev = torch.get_num_threads()
    yield
    torch.set_num_threads(prev)


def pytest_sessionfinish(session, exitstatus):
    if _OWN_INDUCTOR_CACHE is not None:
        shutil.rmtree(_OWN_INDUCTOR_CACHE, ignore_errors=True)
