"""Conversions between ``PackedSequence`` data and padded time-major tensors.

A packed sequence stores, step after step, the rows of the sequences still running at that step
(``batch_sizes[t]`` of them, sorted longest first). The running (t, b) pairs, taken in row-major
order of the [T, B] mask ``b < batch_sizes[t]``, are exactly the rows of ``data``, so both
directions below are plain differentiable indexing.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PackedLayout:
    """Where the rows of a packed sequence sit in the padded [T, B, ...] tensor."""

    steps: torch.Tensor  # [N] int64, time index of each packed row
    rows: torch.Tensor  # [N] int64, batch index of each packed row
    lengths: torch.Tensor  # [B] int64, length of each (sorted) sequence
    T: int
    B: int


def packed_layout(batch_sizes: torch.Tensor, device: torch.device) -> PackedLayout:
    """batch_sizes: [T] int64 on the CPU, as in ``PackedSequence``."""
    T = batch_sizes.numel()
    B = int(batch_sizes[0]) if T > 0 else 0
    running = torch.arange(B).unsqueeze(0) < batch_sizes.unsqueeze(1)  # [T, B]
    steps, rows = running.nonzero(as_tuple=True)
    return PackedLayout(
        steps=steps.to(device),
        rows=rows.to(device),
        lengths=running.sum(0).to(device),
        T=T,
        B=B,
    )


def pad_packed(data: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
    """data [N, *] -> padded [T, B, *] with zeros past each sequence's end."""
    padded = data.new_zeros((layout.T, layout.B) + tuple(data.shape[1:]))
    return padded.index_put((layout.steps, layout.rows), data)


def pack_padded(padded: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
    """padded [T, B, *] -> data [N, *] in packed order."""
    return padded[layout.steps, layout.rows]
