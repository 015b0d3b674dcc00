"""The measure of numerical parity (docs/parity.md), one definition for the tests, the bench's
parity report and the emulation checks."""
from __future__ import annotations

import math

import torch


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref||, computed in float64 on the CPU.

    A NaN or infinity in either tensor gives inf, so that no bound passes it. Where the reference
    is exactly zero the absolute norm ||out|| is returned (zero against zero is 0, anything else
    is measured absolutely). The shapes must be equal."""
    assert isinstance(out, torch.Tensor) and isinstance(ref, torch.Tensor), (type(out), type(ref))
    assert out.shape == ref.shape, f"shape mismatch: {tuple(out.shape)} vs {tuple(ref.shape)}"
    out = out.detach().to("cpu", torch.float64)
    ref = ref.detach().to("cpu", torch.float64)
    if not (torch.isfinite(out).all() and torch.isfinite(ref).all()):
        return math.inf
    ref_norm = ref.norm().item()
    diff = (out - ref).norm().item()
    if ref_norm == 0.0:
        return diff
    err = diff / ref_norm
    return err if math.isfinite(err) else math.inf
