"""Re-seeding of empty k-means clusters by splitting big ones (DeepCluster / faiss style).

An empty centroid is moved next to a donor centroid chosen with probability proportional to
its cluster size, the pair is pushed apart by a tiny symmetric perturbation and the donor's
members are split between the two (paper [0] section 3 keeps no cluster empty; the rule is
faiss' ``split_clusters`` [1], which DeepCluster relies on).

The work is split so that every rank of a distributed k-means runs it alike:

- :func:`reseed_empty` only reads the (all-reduced) counts and the centroids and draws from a
  numpy Generator, so every rank holding the same seed makes the same choices;
- :func:`fill_empty_blocks` splits each donor's local members (block by block, on their
  device), sums the per-donor counts over the ranks and falls back to
  :func:`halve_one_sided` for donors whose members all chose one side; it loops until no
  cluster is empty. :func:`fill_empty` and :func:`split_members` are its one-process forms.

References:
    - [0] DeeperCluster: Caron et al., ICCV 2019, https://arxiv.org/abs/1905.01278
    - [1] faiss ``Clustering.cpp``, ``split_clusters``: https://github.com/facebookresearch/faiss
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from deepercluster import distributed
from deepercluster.cluster.blocks import Blocks, as_blocks
from deepercluster.distributed import ProcessGroup

__all__ = [
    "SPLIT_EPS",
    "fill_empty",
    "fill_empty_blocks",
    "halve_one_sided",
    "reseed_empty",
    "split_members",
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


def _split_round(
    blocks: Blocks,
    labels: Tensor,
    centroids: Tensor,
    pairs: np.ndarray,
    counts: np.ndarray,
    group: ProcessGroup | None,
) -> tuple[Tensor, np.ndarray]:
    """Move each donor's local members that are strictly nearer the new centroid to it.

    Per round: an all-reduce of 2p int64 (each donor's size and movers) and, only if some
    donor's members all chose one side, an all-gather of p int64 per rank (the members on lower
    ranks, for the ceil(n / 2) split in global index order). The new global counts follow
    from those numbers.

    Returns:
        The new (n,) labels and the (k,) global counts.
    """
    k = centroids.shape[0]
    empty, donors = pairs[:, 0], pairs[:, 1]
    partner = torch.full((k,), -1, dtype=torch.int64, device=labels.device)
    partner[torch.as_tensor(donors, device=labels.device)] = torch.as_tensor(
        empty, device=labels.device
    )
    parts: list[tuple[Tensor, Tensor, Tensor]] = []
    for start, x in blocks:
        block_labels = labels[start : start + len(x)]
        idx = torch.nonzero(partner[block_labels] >= 0).flatten()
        old = block_labels[idx]
        new = partner[old]
        points = x[idx]
        to_donor = ((points - centroids[old]) ** 2).sum(dim=1)
        to_new = ((points - centroids[new]) ** 2).sum(dim=1)
        parts.append((idx + start, new, to_new < to_donor))
    members = torch.cat([p[0] for p in parts]).cpu().numpy() if parts else np.zeros(0, np.int64)
    new_np = torch.cat([p[1] for p in parts]).cpu().numpy() if parts else np.zeros(0, np.int64)
    move = torch.cat([p[2] for p in parts]).cpu().numpy() if parts else np.zeros(0, bool)
    donor = labels[torch.as_tensor(members, device=labels.device)].cpu().numpy()
    local_size = np.bincount(donor, minlength=k)
    stats = np.stack([local_size[donors], np.bincount(donor[move], minlength=k)[donors]])
    stats = distributed.all_reduce_sum_np(stats, group)
    size, n_move = np.zeros(k, dtype=np.int64), np.zeros(k, dtype=np.int64)
    size[donors], n_move[donors] = stats[0], stats[1]
    one_sided = (n_move[donors] == 0) | (n_move[donors] == size[donors])
    offset = None
    if one_sided.any():
        before = distributed.all_gather_cat_np(local_size[donors][None], group)
        offset = np.zeros(k, dtype=np.int64)
        offset[donors] = before[: distributed.rank(group)].sum(axis=0)
    move = halve_one_sided(donor, move, size, n_move, offset)
    labels = labels.clone()
    moved_rows = torch.as_tensor(members[move], device=labels.device)
    labels[moved_rows] = torch.as_tensor(new_np[move], device=labels.device)
    moved = np.where(one_sided, size[donors] // 2, n_move[donors])
    counts = counts.copy()
    counts[donors] -= moved
    counts[empty] = moved
    return labels, counts


def fill_empty_blocks(
    blocks: Blocks,
    labels: Tensor,
    centroids: Tensor,
    counts: np.ndarray,
    rng: np.random.Generator,
    group: ProcessGroup | None = None,
    *,
    eps: float = SPLIT_EPS,
) -> tuple[Tensor, Tensor, np.ndarray, np.ndarray]:
    """Re-seed and split until no cluster is empty over all ranks of ``group``.

    Each round fills at least one empty cluster: while one is empty and k <= N, some cluster
    has 2 members. Rounds after the first only happen when more clusters are empty than there
    are donors (k close to N).

    Args:
        blocks: this rank's rows.
        labels: (n,) int64 labels of the E-step, on the rows' device.
        centroids: (k, D) float32 centroids of that E-step (same on every rank).
        counts: (k,) int64 global cluster sizes.
        rng: random stream for the donor choice (same state on every rank).
        group: the process group (None: all ranks, or one process).
        eps: relative size of the perturbation.

    Returns:
        labels (a copy when something moved), centroids with the re-seeded pairs perturbed,
        the (p, 2) ``(empty, donor)`` pairs in round order, and the new global counts.
    """
    all_pairs = [np.zeros((0, 2), dtype=np.int64)]
    while (counts == 0).any():
        moved_centroids, pairs = reseed_empty(centroids.cpu().numpy(), counts, rng, eps=eps)
        centroids = torch.as_tensor(moved_centroids, device=centroids.device)
        labels, counts = _split_round(blocks, labels, centroids, pairs, counts, group)
        all_pairs.append(pairs)
    return labels, centroids, np.concatenate(all_pairs), counts


def fill_empty(
    x: np.ndarray,
    assignments: np.ndarray,
    centroids: np.ndarray,
    rng: np.random.Generator,
    *,
    eps: float = SPLIT_EPS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`fill_empty_blocks` of rows in memory, one process, numpy in and out.

    Args:
        x: (N, D) float32 points.
        assignments: (N,) int64 assignments of the E-step.
        centroids: (k, D) float32 centroids of that E-step.
        rng: random stream for the donor choice.
        eps: relative size of the perturbation.

    Returns:
        assignments (every cluster non-empty), centroids with re-seeded pairs perturbed, and
        the (p, 2) ``(empty, donor)`` pairs in round order; p = clusters re-seeded.
    """
    blocks = as_blocks(np.asarray(x, dtype=np.float32))
    counts = np.bincount(assignments, minlength=centroids.shape[0])
    labels, out, pairs, _ = fill_empty_blocks(
        blocks,
        torch.from_numpy(np.asarray(assignments, dtype=np.int64)),
        torch.from_numpy(np.asarray(centroids, dtype=np.float32)),
        counts,
        rng,
        eps=eps,
    )
    return labels.numpy(), out.numpy(), pairs


def split_members(
    x: np.ndarray, assignments: np.ndarray, centroids: np.ndarray, pairs: np.ndarray
) -> np.ndarray:
    """Split each donor's members between the donor and its new cluster (nearest of the two).

    If all of a donor's members fall on one side (duplicated points, or a centroid at the
    origin that the relative perturbation cannot move), the donor keeps the first
    ``ceil(n / 2)`` of them in index order and the new cluster takes the rest.

    Args:
        x: (N, D) float32 points.
        assignments: (N,) int64 cluster ids (not modified).
        centroids: (k, D) float32 centroids re-seeded by :func:`reseed_empty`.
        pairs: (p, 2) int64 ``(empty, donor)`` rows from :func:`reseed_empty`.

    Returns:
        (N,) int64 new assignments.
    """
    blocks = as_blocks(np.asarray(x, dtype=np.float32))
    counts = np.bincount(assignments, minlength=centroids.shape[0])
    labels, _ = _split_round(
        blocks,
        torch.from_numpy(np.array(assignments, dtype=np.int64)),
        torch.from_numpy(np.asarray(centroids, dtype=np.float32)),
        np.asarray(pairs, dtype=np.int64),
        counts,
        None,
    )
    return labels.numpy()
