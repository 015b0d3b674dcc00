"""The bench's command line refuses bad arguments with one line and its own usage, before any
work starts, and makes the --json directory it is given."""
import argparse
import os

import pytest
import torch

from tlstm import bench
from tlstm.__main__ import main


@pytest.mark.parametrize("argv,message", [
    (["--threads", "0"], "--threads must be at least 1, got 0"),
    (["--threads", "-1"], "--threads must be at least 1, got -1"),
    (["--repeats", "0"], "--repeats must be at least 1, got 0"),
    (["--warmup", "-1"], "--warmup must be at least 0, got -1"),
    (["--budget-s", "0"], "--budget-s must be positive, got 0.0"),
    (["--quik"], "unrecognized arguments: --quik"),
])
def test_bad_arguments_are_one_line_errors_with_the_bench_usage(argv, message, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["bench", *argv])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert "usage: python -m tlstm bench" in err  # the bench's usage, not the top level's
    assert err.strip().endswith(message)
    assert "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_device_cuda_without_a_gpu_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--device", "cuda"])
    assert capsys.readouterr().err.strip().endswith(
        "--device cuda: torch sees no CUDA device on this machine "
        "(torch.cuda.is_available() is False)")


def test_json_directory_is_made_before_any_work(tmp_path):
    parser = argparse.ArgumentParser(prog="bench")
    bench.add_arguments(parser)
    target = tmp_path / "not" / "yet"
    args = parser.parse_args(["--json", f"{target}{os.sep}"])
    bench.check_arguments(parser, args)
    assert target.is_dir()
    path = bench.result_path(args.json, "cpu", "0123456789abcdef")
    assert os.path.dirname(path) == str(target) and path.endswith("-0123456.json")
    # a path that names a file stays that file
    assert bench.result_path(str(tmp_path / "run.json"), "cpu", "0" * 40) == str(
        tmp_path / "run.json")


def test_progress_eta_weighs_each_configuration_by_its_work():
    """The ETA extrapolates from the work done, not the count of configurations: after the
    cheap tenth of the work took 10 s, 90 s are left (counting configurations said 10 s)."""
    from tlstm import bench

    progress = bench.Progress([1.0, 9.0], enabled=False)
    progress.update("first", 1.0)
    assert progress.eta(10.0) == pytest.approx(90.0)
    small = bench.Config("tensorized", 100, 16, 128, 128, L=1, K=3)
    deep = bench.Config("tensorized", 100, 16, 128, 128, L=4, K=3)
    assert bench.work_estimate(deep, "fwd") > 3 * bench.work_estimate(small, "fwd")
    assert bench.work_estimate(small, "fwdbwd") == 3 * bench.work_estimate(small, "fwd")
