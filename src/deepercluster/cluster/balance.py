"""Topping up undersized super-clusters after level 1 (DeeperCluster's hierarchy).

A super-cluster with fewer than k/m images cannot host k/m non-empty sub-clusters (the
reference code ignores this and trains on empty sub-clusters, whose targets never occur), so
images nearest to its centroid are moved in from super-clusters with a surplus.
"""

from __future__ import annotations

import numpy as np
import torch

from deepercluster import distributed
from deepercluster.cluster.blocks import Blocks, Located, as_blocks
from deepercluster.distributed import ProcessGroup

__all__ = ["balance", "balance_super_clusters"]


def _nearest_within_surplus(
    distance: np.ndarray, donor: np.ndarray, surplus: np.ndarray, limit: int
) -> np.ndarray:
    """Positions of the ``limit`` nearest candidates, each donor giving at most its surplus.

    Candidates are in ascending image order; the order (distance, donor, index) is the same
    total order on a rank's shortlist and globally.
    """
    order = np.lexsort((distance, donor))
    group_start = np.searchsorted(donor[order], donor[order], side="left")
    allowed = np.arange(order.size) - group_start < surplus[donor[order]]
    kept = order[allowed]
    chosen: np.ndarray = kept[np.argsort(distance[kept], kind="stable")[:limit]]
    return chosen


def balance(
    blocks: Blocks,
    assignments: np.ndarray,
    centroids: np.ndarray,
    min_size: int,
    where: Located,
    group: ProcessGroup | None = None,
) -> tuple[np.ndarray, int]:
    """Give every super-cluster at least ``min_size`` images by moving images into it.

    A super-cluster with fewer than k/m images cannot host k/m non-empty sub-clusters (the
    reference code ignores this and trains on empty sub-clusters, whose targets never occur).
    For each undersized super-cluster s, in index order, the images nearest to s's centroid
    are taken from super-clusters with a surplus, never pushing one below ``min_size``.

    Distributed, the global choice of the ``deficit`` nearest images is contained in the union
    of every rank's own choice (capped per donor by the global surplus), so only those
    shortlists are gathered: at most ``deficit`` (distance, donor, index) triples per rank.

    Args:
        blocks: this rank's rows.
        assignments: (n,) int64 super-cluster ids of the local rows, in [0, m).
        centroids: (m, D) float32 super-centroids.
        min_size: required size k/m; ``m * min_size <= N``.
        where: this rank's place in the collection.
        group: the process group (None: all ranks, or one process).

    Returns:
        assignments: (n,) int64 balanced copy.
        n_moved: number of images that changed super-cluster (over all ranks).
    """
    m = centroids.shape[0]
    assignments = assignments.copy()
    counts = distributed.all_reduce_sum_np(np.bincount(assignments, minlength=m), group)
    undersized = np.flatnonzero(counts < min_size)
    if undersized.size == 0:
        return assignments, 0
    # |x|^2 - 2 <x, c_s> (+ a constant per s) for every row and super-cluster, in one pass
    # (4 m bytes a row); shifted by the centroids' mean, as the k-means E-step.
    c = torch.as_tensor(centroids, device=blocks.device)
    shift = c.mean(dim=0)
    c = c - shift
    scores = np.empty((blocks.n, m), np.float32)
    for start, features in blocks:
        x = features - shift
        block = (x * x).sum(dim=1)[:, None] - 2.0 * (x @ c.T)
        scores[start : start + len(x)] = block.cpu().numpy()
    n_moved = 0
    for s in undersized:
        deficit = int(min_size - counts[s])
        surplus = counts - min_size
        candidates = np.flatnonzero(surplus[assignments] > 0)
        distance = scores[candidates, s]
        donor = assignments[candidates]
        mine = _nearest_within_surplus(distance, donor, surplus, deficit)
        # float32 distances and int ids below 2**53 are exact in float64.
        triples = np.stack(
            [distance[mine], donor[mine], candidates[mine] + where.offset], axis=1
        ).astype(np.float64)
        # Rank order, and each shortlist lists equal (distance, donor) keys in index order:
        # positions break ties by global index, as in one process.
        gathered = distributed.all_gather_cat_np(triples.reshape(-1, 3), group)
        gathered_donor = gathered[:, 1].astype(np.int64)
        chosen = _nearest_within_surplus(gathered[:, 0], gathered_donor, surplus, deficit)
        rows = np.sort(gathered[chosen, 2].astype(np.int64))
        assignments[where.local(rows)[1]] = s
        counts[s] += chosen.size
        counts -= np.bincount(gathered_donor[chosen], minlength=m)
        n_moved += deficit
    return assignments, n_moved


def balance_super_clusters(
    x: np.ndarray, assignments: np.ndarray, centroids: np.ndarray, min_size: int
) -> tuple[np.ndarray, int]:
    """:func:`balance` of (N, D) float32 rows in memory, in one process."""
    blocks = as_blocks(x)
    return balance(blocks, assignments, centroids, min_size, blocks.locate())
