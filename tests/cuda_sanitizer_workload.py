"""A small CUDA workload of both cells for compute-sanitizer (tests/test_cuda_sanitizer.py runs
it under each tool): every CUDA kernel of tlstm runs at least once, forward and backward, with
sizes that are not multiples of 32, packed input, a projection and both peephole recurrences.
Run directly: python tests/cuda_sanitizer_workload.py"""
import os

import torch
from torch.nn.utils.rnn import pack_padded_sequence

import tlstm


def run_and_backward(module, x, lengths=None, **forward_kwargs):
    inp = x if lengths is None else pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, (h, c) = module(inp, **forward_kwargs)
    out = out.data if lengths is not None else out
    (out.sum() + h.sum() + c.sum()).backward()


def main():
    torch.manual_seed(0)
    dev = "cuda"
    for recurrence in ("stepwise", "persistent"):
        os.environ["TLSTM_CUDA_RECURRENCE"] = recurrence
        for kwargs, lengths in ((dict(hidden_size=37, bidirectional=True), [5, 2, 4]),
                                (dict(hidden_size=16, proj_size=8), None),
                                (dict(hidden_size=20, activation="identity", peephole=False), None)):
            if recurrence == "persistent" and kwargs.get("proj_size"):
                continue
            m = tlstm.PeepholeLSTM(3, **kwargs).to(dev)
            run_and_backward(m, torch.randn(5, 3, 3, device=dev, requires_grad=True), lengths)
    for recurrence in ("stepwise", "persistent"):
        os.environ["TLSTM_CUDA_RECURRENCE"] = recurrence
        for kwargs, lengths, flush in ((dict(hidden_size=37, depth=3), [5, 2, 4], True),
                                       (dict(hidden_size=20, depth=4, kernel_size=5, proj_size=6),
                                        None, False),
                                       (dict(hidden_size=9, depth=3, channel_norm=False,
                                             memory_conv=False, feedback=False), None, True),
                                       # the 3-D cell (the step kernels whatever is forced)
                                       (dict(hidden_size=35, depth=3, tensor_dim=3), [5, 2, 4],
                                        True),
                                       (dict(hidden_size=12, depth=2, kernel_size=5,
                                             tensor_dim=3), None, False)):
            m = tlstm.TensorizedLSTM(3, **kwargs).to(dev)
            run_and_backward(m, torch.randn(5, 3, 3, device=dev, requires_grad=True), lengths,
                             flush=flush)
    with torch.no_grad():  # the inference instantiations, both recurrences
        for recurrence in ("stepwise", "persistent"):
            os.environ["TLSTM_CUDA_RECURRENCE"] = recurrence
            tlstm.PeepholeLSTM(3, 33).to(dev)(torch.randn(4, 2, 3, device=dev))
            tlstm.TensorizedLSTM(3, 33, depth=3).to(dev)(torch.randn(4, 2, 3, device=dev))
            tlstm.TensorizedLSTM(3, 33, depth=3, tensor_dim=3).to(dev)(
                torch.randn(4, 2, 3, device=dev))
    torch.cuda.synchronize()
    print("sanitizer workload done")


if __name__ == "__main__":
    main()
