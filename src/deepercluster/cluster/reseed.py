"""Re-seeding of empty k-means clusters by splitting big ones (DeepCluster / faiss style).

An empty centroid is moved next to a donor centroid chosen with probability proportional to
its cluster size, the pair is pushed apart by a tiny symmetric perturbation and the donor's
members are split between the two (paper [0] section 3 keeps no cluster empty; the rule is
faiss' ``split_clusters`` [1], which DeepCluster relies on).

The work is split so that a distributed k-means can run it on every rank:

- :func:`reseed_empty` only reads the (all-reduced) counts and the centroids and draws from a
  numpy Generator, so every rank holding the same seed makes the same choices;
- :func:`split_members` only touches the local points (its two steps, :func:`split_sides`
  and :func:`halve_one_sided`, let a distributed version sum per-donor counts in between);
- :func:`fill_empty` loops the two until no cluster is empty (single process: the counts are
  exact after each round; distributed: all-reduce them between rounds).

References:
    - [0] DeeperCluster: Caron et al., ICCV 2019, https://arxiv.org/abs/1905.01278
    - [1] faiss ``Clustering.cpp``, ``split_clusters``: https://github.com/facebookresearch/faiss
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "SPLIT_EPS",
    "fill_empty",
    "halve_one_sided",
    "reseed_empty",
    "split_members",
    "split_sides",
]

# faiss' EPS: small enough to keep both halves near the donor's centroid, large enough to
# survive float32 rounding (the float32 resolution is 2**-24).
SPLIT_EPS = 1.0 / 1024.0


def reseed_empty(
    centroids: np.ndarray,
    counts: np.ndarray,
    rng: np.random.Generator,
    *,
    eps: float = SPLIT_EPS,
) -> tuple[np.ndarray, np.ndarray]:
    """One round of re-seeding: pair every empty cluster with a distinct donor.

    Donors are drawn without replacement with probability proportional to their size among the
    clusters with at least 2 members, so no donor is used twice in a round and a cluster just
    created by a split is never a donor (it is empty when the round starts). If there are more
    empty clusters than donors, the highest-indexed empty ones wait for the next round.

    The perturbation is faiss' sign pattern: coordinate j of the new centroid is scaled by
    ``1 + eps`` for even j and ``1 - eps`` for odd j, the donor's the other way round.

    Args:
        centroids: (k, D) float32 centroids.
        counts: (k,) int64 cluster sizes (global ones when distributed).
        rng: random stream; consumed only when a cluster is empty.
        eps: relative size of the perturbation.

    Returns:
        centroids: (k, D) float32 copy with the pairs re-seeded.
        pairs: (p, 2) int64 rows ``(empty cluster, donor cluster)``, empty ids ascending.

    Raises:
        ValueError: some cluster is empty but none has 2 members (then k > N).
    """
    empty = np.flatnonzero(counts == 0)
    centroids = np.array(centroids, dtype=np.float32, copy=True)
    if empty.size == 0:
        return centroids, np.zeros((0, 2), dtype=np.int64)
    candidates = np.flatnonzero(counts >= 2)
    if candidates.size == 0:
        raise ValueError(
            f"{empty.size} empty clusters but no cluster with 2 members to split; "
            "k must not exceed the number of points"
        )
    size = min(empty.size, candidates.size)
    weights = counts[candidates].astype(np.float64)
    # Successive draws without replacement, each proportional to size: faiss' rule minus
    # its repeated donors.
    donors = rng.choice(candidates, size=size, replace=False, p=weights / weights.sum())
    empty = empty[:size]
    sign = np.where(np.arange(centroids.shape[1]) % 2 == 0, eps, -eps).astype(np.float32)
    base = centroids[donors]
    centroids[empty] = base * (1 + sign)
    centroids[donors] = base * (1 - sign)
    return centroids, np.stack([empty, donors], axis=1).astype(np.int64)


def split_sides(
    x: np.ndarray, assignments: np.ndarray, centroids: np.ndarray, pairs: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First half of :func:`split_members`: which side of its split each donor member prefers.

    Args:
        x: (N, D) float32 points.
        assignments: (N,) int64 cluster ids.
        centroids: (k, D) float32 centroids re-seeded by :func:`reseed_empty`.
        pairs: (p, 2) int64 ``(empty, donor)`` rows from :func:`reseed_empty`.

    Returns:
        members: (n,) int64 indices of the donors' members, ascending.
        new: (n,) int64 the new (formerly empty) cluster paired with each member's donor.
        move: (n,) bool True where the member is strictly nearer the new centroid.
    """
    k = centroids.shape[0]
    partner = np.full(k, -1, dtype=np.int64)
    partner[pairs[:, 1]] = pairs[:, 0]
    members = np.flatnonzero(partner[assignments] >= 0)
    donor = assignments[members]
    new = partner[donor]
    points = x[members]
    to_donor = points - centroids[donor]
    to_new = points - centroids[new]
    move = np.einsum("ij,ij->i", to_new, to_new) < np.einsum("ij,ij->i", to_donor, to_donor)
    return members, new, move


def halve_one_sided(
    donor: np.ndarray,
    move: np.ndarray,
    size: np.ndarray,
    n_move: np.ndarray,
    offset: np.ndarray | None = None,
) -> np.ndarray:
    """Second half of :func:`split_members`: the ``ceil(n / 2)`` fallback of one-sided donors.

    Args:
        donor: (n,) int64 donor of each member, members in ascending index order.
        move: (n,) bool output of :func:`split_sides`.
        size: (k,) int64 members per cluster (global ones when distributed).
        n_move: (k,) int64 members per cluster with ``move`` set (global ones when distributed).
        offset: (k,) int64 members of each cluster that come before these ones in the global
            index order (on lower ranks); None means 0 (single process).

    Returns:
        (n,) bool ``move`` with the donors whose members all chose one side halved in index
        order: the first ``ceil(size / 2)`` stay.
    """
    one_sided = (n_move == 0) | (n_move == size)
    fallback = one_sided[donor]
    if not fallback.any():
        return move
    local_size = np.bincount(donor, minlength=size.shape[0])
    # Rank of each member inside its donor, in index order (donor's members are ascending).
    order = np.argsort(donor, kind="stable")
    starts = np.cumsum(local_size) - local_size
    rank = np.empty_like(donor)
    rank[order] = np.arange(donor.size) - starts[donor[order]]
    if offset is not None:
        rank += offset[donor]
    move = move.copy()
    move[fallback] = rank[fallback] >= (size[donor[fallback]] + 1) // 2
    return move


def split_members(
    x: np.ndarray, assignments: np.ndarray, centroids: np.ndarray, pairs: np.ndarray
) -> np.ndarray:
    """Split each donor's members between the donor and its new cluster (nearest of the two).

    If all of a donor's members fall on one side (duplicated points, or a centroid at the
    origin that the relative perturbation cannot move), the donor keeps the first
    ``ceil(n / 2)`` of them in index order and the new cluster takes the rest, so both end up
    non-empty. A distributed version runs :func:`split_sides`, sums the per-donor counts over
    ranks and calls :func:`halve_one_sided` with its members' global offsets.

    Args:
        x: (N, D) float32 points.
        assignments: (N,) int64 cluster ids.
        centroids: (k, D) float32 centroids re-seeded by :func:`reseed_empty`.
        pairs: (p, 2) int64 ``(empty, donor)`` rows from :func:`reseed_empty`.

    Returns:
        (N,) int64 new assignments (a copy).
    """
    assignments = assignments.copy()
    if pairs.shape[0] == 0:
        return assignments
    k = centroids.shape[0]
    members, new, move = split_sides(x, assignments, centroids, pairs)
    donor = assignments[members]
    size = np.bincount(donor, minlength=k)
    n_move = np.bincount(donor[move], minlength=k)
    move = halve_one_sided(donor, move, size, n_move)
    assignments[members[move]] = new[move]
    return assignments


def fill_empty(
    x: np.ndarray,
    assignments: np.ndarray,
    centroids: np.ndarray,
    rng: np.random.Generator,
    *,
    eps: float = SPLIT_EPS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Re-seed and split until no cluster is empty (single-process driver).

    Each round fills at least one empty cluster: while one is empty and k <= N, some cluster
    has 2 members. Rounds after the first only happen when more clusters are empty than there
    are donors (k close to N).

    Args:
        x: (N, D) float32 points.
        assignments: (N,) int64 assignments of the E-step.
        centroids: (k, D) float32 centroids of that E-step.
        rng: random stream for the donor choice.
        eps: relative size of the perturbation.

    Returns:
        assignments: (N,) int64, every cluster non-empty (the input itself if none was empty).
        centroids: (k, D) float32 with re-seeded pairs perturbed.
        pairs: (p, 2) int64 all ``(empty, donor)`` pairs, in round order; p = clusters re-seeded.
    """
    k = centroids.shape[0]
    counts = np.bincount(assignments, minlength=k)
    all_pairs = [np.zeros((0, 2), dtype=np.int64)]
    while (counts == 0).any():
        centroids, pairs = reseed_empty(centroids, counts, rng, eps=eps)
        assignments = split_members(x, assignments, centroids, pairs)
        counts = np.bincount(assignments, minlength=k)
        all_pairs.append(pairs)
    return assignments, centroids, np.concatenate(all_pairs)
