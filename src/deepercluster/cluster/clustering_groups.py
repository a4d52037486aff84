"""Level 2 of DeeperCluster's k-means in clustering groups: one group of ranks per super-cluster.

DeeperCluster, Caron et al. 2019 (https://arxiv.org/abs/1905.01278), and ALGORITHM.md section 6:
level 1 uses every process; then the m super-clusters are clustered at the same time, each by
its own group of W/m processes, instead of one after the other by everybody.

Every rank starts with a shard of every super-cluster. One all-to-all moves each super-cluster's
rows to its group (member j of group s receives the j-th contiguous slice of s's rows, in
collection order, so the group's k-means equals the single-process one on those rows); each
group runs the distributed k-means on its own process group; a second all-to-all brings the
sub-cluster labels back to the rows' owners. Communication: every feature row crosses the
network once (4 D bytes) and its label once back (8 bytes), plus the usual per-iteration
all-reduce of k/m x D sums, now inside groups of W/m ranks.
"""

from __future__ import annotations

import numpy as np
import torch

from deepercluster import distributed
from deepercluster.cluster.blocks import Blocks
from deepercluster.cluster.hierarchical import (
    ClusterRun,
    HierarchicalResult,
    check_init,
    check_sizes,
    level_one,
    subcluster_seed,
)
from deepercluster.cluster.kmeans import KMeansResult, lloyd, to_blocks
from deepercluster.distributed import ProcessGroup

__all__ = ["hierarchical_kmeans_grouped"]


def hierarchical_kmeans_grouped(
    x_local: np.ndarray | Blocks,
    *,
    k: int,
    m: int,
    groups: list[list[int]],
    process_groups: list[ProcessGroup | None],
    niter: int = 10,
    seed: int = 0,
    init: HierarchicalResult | None = None,
    init_method: str = "random",
    level1_sample: int = 0,
) -> HierarchicalResult:
    """Hierarchical k-means with level 2 in per-super-cluster groups (all ranks must call it).

    Args:
        x_local: (n_r, D) float32 rows of this rank (contiguous shards in rank order).
        k, m: total sub-clusters and super-clusters (m >= 2).
        groups: ranks of the clustering group of each super-cluster (m lists).
        process_groups: the matching process groups (from ``distributed.make_groups``).
        niter, seed, init, init_method, level1_sample: as
            :func:`~.hierarchical.hierarchical_kmeans`.

    Returns:
        The :class:`HierarchicalResult`, with this rank's rows' assignments and the centroids
        of every level (identical on every rank). Equal to the single-process result.
    """
    if len(groups) != m or len(process_groups) != m:
        raise ValueError(f"need one clustering group per super-cluster ({m}), got {len(groups)}")
    blocks = to_blocks(x_local)
    where = blocks.locate()
    check_sizes(k, m, where.total)
    if init is not None:
        check_init(init, k, m, blocks.dim)
    per_super = k // m
    me = distributed.rank()
    world = distributed.world_size()

    def run(_run: int, rows: Blocks, kk: int, sd: int, ini: np.ndarray | None) -> KMeansResult:
        return lloyd(rows, kk, niter=niter, seed=sd, init=ini, init_method=init_method)

    flat: ClusterRun = run
    # ============ level 1: super-clusters, all ranks ============
    level1, super_local, n_moved = level_one(
        blocks, where, flat, k=k, m=m, seed=seed, init=init, level1_sample=level1_sample,
        group=None,
    )  # fmt: skip

    # ============ move each super-cluster's rows to its group ============
    counts = np.bincount(super_local, minlength=m).astype(np.int64)
    table = distributed.all_gather_cat_np(counts[None, :]).reshape(world, m)  # (W, m)
    send_order, send_counts = _routing(super_local, table, groups, me)
    recv_counts = [int(_routing_counts(table, groups, src)[me]) for src in range(world)]
    if len(send_order):
        mine = blocks.take(send_order).cpu().numpy()
    else:
        mine = np.zeros((0, blocks.dim), np.float32)
    received = distributed.all_to_all_np(mine, send_counts, recv_counts)

    # ============ level 2: group s clusters super-cluster s ============
    s_mine = next(s for s, ranks in enumerate(groups) if me in ranks)
    level2 = lloyd(
        Blocks(torch.from_numpy(received).to(blocks.device)),
        per_super,
        niter=niter,
        seed=subcluster_seed(seed, s_mine),
        init=None if init is None else init.sub_centroids[s_mine],
        init_method=init_method,
        group=process_groups[s_mine],
    )

    # ============ labels back to the rows' owners; centroids to everyone ============
    back = distributed.all_to_all_np(level2.assignments, recv_counts, send_counts)
    sub_local = np.empty(blocks.n, dtype=np.int64)
    sub_local[send_order] = back
    leader = groups[s_mine][0] == me
    sub_centroids = np.zeros((m, per_super, blocks.dim), dtype=np.float64)
    totals = np.zeros(2, dtype=np.float64)
    if leader:
        sub_centroids[s_mine] = level2.centroids
        totals[:] = (level2.objective, level2.n_reseeded)
    sub_centroids = distributed.all_reduce_sum_np(sub_centroids)
    totals = distributed.all_reduce_sum_np(totals)
    return HierarchicalResult(
        super_assignments=super_local,
        sub_assignments=sub_local,
        super_centroids=level1.centroids,
        sub_centroids=sub_centroids.astype(np.float32),
        objective=float(totals[0]),
        super_objective=level1.objective,
        n_reseeded=level1.n_reseeded + int(totals[1]),
        n_moved=n_moved,
    )


def _routing_counts(table: np.ndarray, groups: list[list[int]], src: int) -> np.ndarray:
    """Rows rank ``src`` sends to every rank: (W,) counts.

    Member j of group s receives positions [n_s j / G, n_s (j+1) / G) of super-cluster s's rows
    in collection order; rank ``src``'s rows of s occupy positions [before, before + c).
    """
    out = np.zeros(table.shape[0], dtype=np.int64)
    for s, ranks in enumerate(groups):
        n_s, g = int(table[:, s].sum()), len(ranks)
        before, c = int(table[:src, s].sum()), int(table[src, s])
        for j, dst in enumerate(ranks):
            lo, hi = n_s * j // g, n_s * (j + 1) // g
            out[dst] = max(0, min(hi, before + c) - max(lo, before))
    return out


def _routing(
    super_local: np.ndarray, table: np.ndarray, groups: list[list[int]], me: int
) -> tuple[np.ndarray, list[int]]:
    """Order of this rank's rows grouped by destination rank, and the count for each rank."""
    counts = _routing_counts(table, groups, me)
    destination = np.empty(len(super_local), dtype=np.int64)
    for s, ranks in enumerate(groups):
        # This rank's rows of s, in collection order, go to s's members in rank order.
        rows = np.flatnonzero(super_local == s)
        start = 0
        for dst in ranks:
            destination[rows[start : start + int(counts[dst])]] = dst
            start += int(counts[dst])
    # Stable: within each destination the rows keep their collection order.
    order = np.argsort(destination, kind="stable")
    return order, [int(c) for c in counts]
