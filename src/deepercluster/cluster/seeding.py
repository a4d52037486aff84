"""Starting centroids of a k-means: a warm start, k random rows, or k-means++.

Every rank of a process group gets the same centroids: the rows are drawn by a numpy Generator
seeded alike on every rank, over the whole collection, and assembled by an all-reduce (each
owner fills its rows in). k-means++ then runs on that gathered sample, identically everywhere.

References:
    - Arthur & Vassilvitskii, "k-means++: The Advantages of Careful Seeding", SODA 2007.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from deepercluster import distributed
from deepercluster.cluster.blocks import Blocks, Located
from deepercluster.distributed import ProcessGroup

__all__ = ["INIT_METHODS", "initial_centroids"]

INIT_METHODS = ("random", "kmeans++")
# k-means++ runs on this many rows per centroid (at least _PLUS_MIN_SAMPLE rows).
_PLUS_PER_CENTROID = 16
_PLUS_MIN_SAMPLE = 4096


def _gather_rows(
    blocks: Blocks, where: Located, rows: np.ndarray, group: ProcessGroup | None
) -> Tensor:
    """(len(rows), D) float32 the global rows ``rows`` (sorted) on every rank.

    Each owner fills its rows in and an all-reduce assembles them (x + 0 is exact).
    """
    out = torch.zeros((len(rows), blocks.dim), dtype=torch.float32, device=blocks.device)
    positions, local = where.local(rows)
    if len(local):
        out[torch.as_tensor(positions, device=out.device)] = blocks.take(local)
    return distributed.all_reduce_sum(out, group)


def _kmeans_plus_plus(sample: Tensor, k: int, rng: np.random.Generator) -> Tensor:
    """k-means++ seeding [Arthur & Vassilvitskii 2007] of ``sample`` (s, D): (k, D) rows.

    Each next centroid is a row drawn with probability proportional to its squared distance
    to the nearest centroid so far (one (s, D) x (D,) product per centroid, no (s, D)
    temporary); the uniform numbers come from ``rng`` (numpy), so every rank holding the same
    sample draws the same rows.
    """
    # Distances relative to the sample's mean: float32 rounding scales with its spread.
    centred = sample - sample.mean(dim=0)
    sq_norms = (centred * centred).sum(dim=1)

    def to_row(i: int) -> Tensor:
        return (sq_norms - 2.0 * (centred @ centred[i]) + sq_norms[i]).clamp_(min=0.0).double()

    chosen = [int(rng.integers(sample.shape[0]))]
    closest = to_row(chosen[0])
    for _ in range(1, k):
        cumulative = torch.cumsum(closest, dim=0)
        total = float(cumulative[-1])
        if total <= 0.0:  # fewer distinct rows than k: any row (re-seeding splits them later)
            nxt = int(rng.integers(sample.shape[0]))
        else:
            target = torch.tensor([rng.random() * total], dtype=torch.float64, device=sample.device)
            nxt = min(int(torch.searchsorted(cumulative, target)), sample.shape[0] - 1)
        chosen.append(nxt)
        closest = torch.minimum(closest, to_row(nxt))
    return sample[torch.as_tensor(chosen, device=sample.device)].clone()


def initial_centroids(
    blocks: Blocks,
    where: Located,
    k: int,
    init: np.ndarray | None,
    method: str,
    rng: np.random.Generator,
    group: ProcessGroup | None,
) -> Tensor:
    """(k, D) float32 starting centroids, the same on every rank.

    ``init`` (a warm start) is copied; ``random`` takes k distinct rows of the collection;
    ``kmeans++`` seeds from a random sample of max(4096, 16 k) rows, at most 4 blocks' worth
    (the memory bound of a streamed store) and at least k.
    """
    if init is not None:
        if init.shape != (k, blocks.dim):
            raise ValueError(
                f"init has shape {init.shape}, expected (k, D) = {(k, blocks.dim)}; "
                "warm-start only from a clustering with the same k and feature dimension"
            )
        if not np.isfinite(init).all():
            raise ValueError("init contains NaN or inf; pass init=None to start from random rows")
        return torch.as_tensor(np.asarray(init, dtype=np.float32), device=blocks.device).clone()
    if method not in INIT_METHODS:
        raise ValueError(f"cluster.init ({method!r}) must be one of {INIT_METHODS}")
    if method == "random":
        # k distinct rows (duplicated *values* are possible and handled by re-seeding).
        rows = np.sort(rng.choice(where.total, size=k, replace=False))
        return _gather_rows(blocks, where, rows, group)
    size = max(_PLUS_MIN_SAMPLE, _PLUS_PER_CENTROID * k)
    size = min(where.total, size, max(k, 4 * blocks.block_rows))
    rows = np.sort(rng.choice(where.total, size=size, replace=False))
    return _kmeans_plus_plus(_gather_rows(blocks, where, rows, group), k, rng)
