"""Balanced sampling across the hierarchy: water-filling over super-clusters, then sub-clusters.

Vo et al. 2024, "Automatic Data Curation for Self-Supervised Learning: A Clustering-Based
Approach" (https://arxiv.org/abs/2405.15613), section 3: a budget is split as evenly as possible
between the clusters of the top level, each cluster's share between its children, and so on
down to the leaves. Clusters smaller than their share give all they have and the rest of the
budget flows to the others (water-filling), so the subset is as balanced as the pool allows.
Here the hierarchy is DeeperCluster's own: m super-clusters of k/m sub-clusters each.
"""

from __future__ import annotations

import numpy as np

__all__ = ["allocate", "pick_members", "water_fill"]


def water_fill(capacity: np.ndarray, budget: int) -> np.ndarray:
    """Split ``budget`` units as evenly as possible among bins of the given capacities.

    Every bin gets ``min(capacity, level)`` for the level that spends the budget; the units
    that an even split cannot place (fewer than the bins still open) go one each to the open
    bins with the most capacity left, the lower index first among equals.

    Args:
        capacity: (n,) int64 >= 0, what each bin can give.
        budget: units to place, at most ``capacity.sum()``.

    Returns:
        (n,) int64 share of each bin; sums to ``budget``.

    Raises:
        ValueError: the budget exceeds the total capacity.
    """
    capacity = np.asarray(capacity, dtype=np.int64)
    if budget > int(capacity.sum()):
        raise ValueError(f"cannot place {budget} in bins holding {int(capacity.sum())}")
    share = np.zeros(len(capacity), dtype=np.int64)
    order = np.argsort(capacity, kind="stable")  # smallest first: they saturate first
    left = budget
    for pos, i in enumerate(order):
        open_bins = len(order) - pos
        even = left // open_bins
        if capacity[i] <= even:
            share[i] = capacity[i]
            left -= int(capacity[i])
            continue
        rest = order[pos:]
        share[rest] = even
        extra = left - even * open_bins
        # Largest capacity first, lower index among equals: deterministic and hand-checkable.
        by_room = rest[np.lexsort((rest, -capacity[rest]))]
        share[by_room[:extra]] += 1
        break
    return share


def allocate(super_of: np.ndarray, capacity: np.ndarray, budget: int) -> np.ndarray:
    """Water-fill ``budget`` across super-clusters, then each one's share across its clusters.

    Args:
        super_of: (k,) int64 super-cluster of each cluster.
        capacity: (k,) int64 images each cluster can give (pool size, after caps).
        budget: images to choose in all.

    Returns:
        (k,) int64 quota of each cluster; sums to ``budget``.
    """
    super_of = np.asarray(super_of, dtype=np.int64)
    capacity = np.asarray(capacity, dtype=np.int64)
    supers = np.unique(super_of)
    per_super = np.array([capacity[super_of == s].sum() for s in supers], dtype=np.int64)
    super_share = water_fill(per_super, budget)
    quota = np.zeros(len(capacity), dtype=np.int64)
    for s, share in zip(supers, super_share, strict=True):
        members = np.flatnonzero(super_of == s)
        quota[members] = water_fill(capacity[members], int(share))
    return quota


def pick_members(
    members: np.ndarray,
    count: int,
    *,
    rule: str,
    distance: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """``count`` of a cluster's ``members``: the nearest to its centroid, or a random draw.

    Args:
        members: (n,) ascending image ids of the cluster's pool.
        count: how many to choose (at most n).
        rule: ``nearest`` (ties by id) or ``random``.
        distance: (N,) distance of every image to its own centroid (NaN sorts last).
        rng: the cluster's generator (seeded per cluster so a cluster's pick does not depend
            on the others).

    Returns:
        (count,) ascending ids.
    """
    if rule == "nearest":
        order = np.lexsort((members, np.nan_to_num(distance[members], nan=np.inf)))
        return np.sort(members[order[:count]])
    return np.sort(rng.choice(members, size=count, replace=False))
