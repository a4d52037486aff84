"""Shared helpers of the model tests."""

from __future__ import annotations

import torch

from deepercluster.models import HierarchicalHeads


def random_heads(d: int, s: int, n_sub: int, *, seed: int = 0) -> HierarchicalHeads:
    """float64 heads with N(0, 1) parameters: larger than the 0.01 init, so differences
    between two computations are not hidden by scale (and the softmax is far from uniform)."""
    heads = HierarchicalHeads(d, s, n_sub).double()
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        for p in heads.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return heads
