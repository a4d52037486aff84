"""Global descriptors of a conv activation map for instance retrieval: R-MAC and GeM.

- R-MAC (Tolias, Sicre and Jégou, ICLR 2016, arXiv 1511.05879): max-pool square regions laid
  out on a grid at L scales, L2-normalise each region's vector, sum them and L2-normalise the
  sum. The grid is the paper's: at scale l the side is ``2 * min(H, W) / (l + 1)``, with l
  regions along the short side and l + m along the long side, m chosen so consecutive regions
  overlap by about 40%. The layout follows the authors' and Radenović's reference code
  (cirtorch ``rmac``) without its extra whole-map region.
- GeM (Radenović, Tolias and Chum, TPAMI 2018, arXiv 1711.02512): the generalised mean
  ``(mean x^p)^(1/p)`` per channel, p = 1 average pooling, p -> infinity max pooling.

DeeperCluster (arXiv 1905.01278, section 4.3) evaluates retrieval with multi-scale R-MAC of
the last conv layer, PCA-whitened; the multi-scale sum and the whitening are in
:mod:`deepercluster.evaluation.protocols.retrieval`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["gem", "rmac", "rmac_regions"]

_OVERLAP = 0.4  # wanted overlap of neighbouring regions (Tolias et al.)
_STEPS = (2, 3, 4, 5, 6, 7)  # candidate numbers of regions along the long side at l = 1
_EPS = 1e-6


def rmac_regions(height: int, width: int, levels: int = 3) -> list[tuple[int, int, int]]:
    """The square regions of R-MAC on a ``height`` x ``width`` map.

    Args:
        height, width: the activation map's size in cells.
        levels: L, number of region scales.

    Returns:
        ``(top, left, side)`` of every region, scale by scale, row by row.
    """
    if levels < 1:
        raise ValueError(f"R-MAC needs at least one region level, got {levels}")
    short, long = min(height, width), max(height, width)
    # m: extra regions along the long side, so that the l=1 regions overlap by about 40%
    extra = 0
    if long > short:
        overlaps = [abs((short**2 - short * (long - short) / (s - 1)) / short**2 - _OVERLAP)
                    for s in _STEPS]  # fmt: skip
        extra = 1 + min(range(len(_STEPS)), key=overlaps.__getitem__)
    extra_w, extra_h = (extra, 0) if width > height else (0, extra) if height > width else (0, 0)
    regions: list[tuple[int, int, int]] = []
    for level in range(1, levels + 1):
        side = math.floor(2 * short / (level + 1))
        if side == 0:
            continue
        half = math.floor(side / 2 - 1)

        def starts(length: int, n: int, side: int = side, half: int = half) -> list[int]:
            step = 0.0 if n == 1 else (length - side) / (n - 1)
            return [int(math.floor(half + i * step) - half) for i in range(n)]

        for top in starts(height, level + extra_h):
            for left in starts(width, level + extra_w):
                regions.append((top, left, side))
    return regions


def rmac(maps: Tensor, levels: int = 3) -> Tensor:
    """R-MAC descriptors of activation maps.

    Args:
        maps: (B, C, H, W) non-negative activations (post-ReLU).
        levels: L, region scales.

    Returns:
        (B, C) float32, L2-normalised sum of the L2-normalised region max-pools.
    """
    maps = maps.float()
    total = torch.zeros(maps.shape[:2], device=maps.device)
    for top, left, side in rmac_regions(maps.shape[2], maps.shape[3], levels):
        region = maps[:, :, top : top + side, left : left + side].amax(dim=(2, 3))
        total += region / (region.norm(dim=1, keepdim=True) + _EPS)
    out: Tensor = total / (total.norm(dim=1, keepdim=True) + _EPS)
    return out


def gem(maps: Tensor, p: float = 3.0) -> Tensor:
    """GeM descriptors: ``(mean over H, W of x^p)^(1/p)`` per channel, L2-normalised.

    Args:
        maps: (B, C, H, W) non-negative activations (clamped at 1e-6 so the power is defined).
        p: the pooling exponent (3 in Radenović et al.).

    Returns:
        (B, C) float32 unit vectors.
    """
    if p <= 0:
        raise ValueError(f"the GeM exponent p must be positive, got {p}")
    pooled = maps.float().clamp(min=_EPS).pow(p).mean(dim=(2, 3)).pow(1.0 / p)
    out: Tensor = pooled / (pooled.norm(dim=1, keepdim=True) + _EPS)
    return out
