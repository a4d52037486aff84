"""PCA, k-means and DeeperCluster's two-level k-means over features sharded across ranks.

Every rank holds a shard of the rows, (n_r, D) float32, possibly empty; the collection is the
concatenation of the shards in the rank order of ``group``. Only per-cluster statistics travel
(SwAV's ``cluster_memory``: local E-step, all-reduced sums and counts), plus small collectives
for initialisation, re-seeding and balancing. Each function returns what its single-process
counterpart returns on the concatenated rows from the same seed: the same assignments (this
rank's part) and, identical on every rank, the same centroids up to the rounding of float64
sums taken in another order. Every rank of ``group`` must make the same calls; with one process
the collectives are the identity.

References:
    - [0] DeeperCluster: Caron et al., "Unsupervised Pre-Training of Image Features on
      Non-Curated Data", ICCV 2019, https://arxiv.org/abs/1905.01278 (section 6 of
      ``docs/ALGORITHM.md``: level 1 on all ranks, level 2 per super-cluster)
    - [1] SwAV / DeepCluster-v2: Caron et al., 2020, https://arxiv.org/abs/2006.09882
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deepercluster.cluster.hierarchical import HierarchicalResult, check_init, two_levels
from deepercluster.cluster.kmeans import (
    KMeansResult,
    accumulate,
    assign,
    check_features,
    faiss_threads,
    initial_centroids,
    squared_distances,
    update_centroids,
)
from deepercluster.cluster.level1_sample import Level1Sample, draw_level1_sample
from deepercluster.cluster.preprocess import PCAWhitening, feature_moments, pca_from_moments
from deepercluster.cluster.reseed import halve_one_sided, reseed_empty, split_sides
from deepercluster.distributed import ProcessGroup, all_gather_cat_np, all_reduce_sum_np, rank

__all__ = [
    "fit_pca_distributed",
    "hierarchical_kmeans_distributed",
    "kmeans_distributed",
    "level1_sample_distributed",
]

_BLOCK_ROWS = 65536


@dataclass(frozen=True)
class Shards:
    """Where this rank's rows sit in the collection: global rows [offset, offset + n_local)."""

    n: int
    offset: int
    n_local: int
    dim: int


def locate_shards(
    x_local: np.ndarray, group: ProcessGroup | None, *, check: bool = True
) -> tuple[np.ndarray, Shards]:
    """Validate the shard on every rank at once and locate it in the collection.

    A rank that raised alone would leave the others waiting in their next collective, so each
    rank only reports its problem here and every rank raises together.
    """
    problem = ""
    if x_local.ndim != 2:
        problem = f"x_local must have shape (n_r, D), got {x_local.shape}; reshape it first"
    elif check and (x_local.shape[0] > 0 or x_local.dtype != np.float32):
        try:
            x_local = check_features(x_local, name="x_local")
        except ValueError as error:
            problem = str(error)
    n_local, dim = (x_local.shape[0], x_local.shape[1]) if x_local.ndim == 2 else (0, -1)
    mine = np.array([n_local, dim, 1 if problem else 0], dtype=np.int64)
    table = all_gather_cat_np(mine, group).reshape(-1, 3)
    if table[:, 2].any():
        bad = np.flatnonzero(table[:, 2]).tolist()
        raise ValueError(problem or f"ranks {bad} hold invalid features (see their error)")
    if (table[:, 1] != table[0, 1]).any():
        raise ValueError(
            f"ranks hold features of dimensions {table[:, 1].tolist()}; every shard must come "
            "from the same model (and PCA)"
        )
    counts = table[:, 0]
    me = rank(group)
    shards = Shards(int(counts.sum()), int(counts[:me].sum()), int(n_local), int(table[0, 1]))
    return x_local, shards


def check_k_fits(k: int, n: int) -> None:
    if k > n:
        raise ValueError(
            f"cluster.k ({k}) is larger than the number of images ({n}); lower cluster.k"
        )


def _local_rows(rows: np.ndarray, shards: Shards) -> tuple[np.ndarray, np.ndarray]:
    """Split sorted global row ids into (positions in ``rows``, local row ids) of this rank."""
    lo, hi = np.searchsorted(rows, [shards.offset, shards.offset + shards.n_local])
    return np.arange(lo, hi), rows[lo:hi] - shards.offset


def fit_pca_distributed(
    x_local: np.ndarray,
    *,
    dim: int,
    power: float = 0.5,
    sample: int | None = None,
    seed: int = 0,
    group: ProcessGroup | None = None,
) -> PCAWhitening:
    """:func:`~deepercluster.cluster.preprocess.fit_pca` on the concatenated shards.

    The moments ``(n, sum x, sum x x^T)`` add up across shards, so one all-reduce of
    ``8 * (1 + D + D^2)`` bytes fits the whitening; every rank then runs the same eigh on the
    same numbers and gets the same, sign-fixed result.

    Args:
        x_local: (n_r, D) this rank's features (n_r may be 0).
        dim: output dimension (see :func:`~deepercluster.cluster.preprocess.pca_from_moments`).
        power: whitening power (0.5 whitens, 0 only projects).
        sample: fit on this many rows drawn over the whole collection, the same rows as
            ``fit_pca(concatenation, sample=sample, seed=seed)``; None or >= N: all rows.
        seed: seeds the sample.
        group: process group holding the shards (None: all ranks).

    Returns:
        The fitted :class:`~deepercluster.cluster.preprocess.PCAWhitening`, same on every rank.
    """
    x_local, shards = locate_shards(x_local, group, check=False)
    if sample is not None and sample < shards.n:
        if sample < 2:
            raise ValueError(f"cluster.pca_sample ({sample}) must be >= 2")
        rows = np.sort(np.random.default_rng(seed).choice(shards.n, size=sample, replace=False))
        x_local = x_local[_local_rows(rows, shards)[1]]
    n, total, total_outer = feature_moments(x_local)
    packed = all_reduce_sum_np(np.concatenate([[float(n)], total, total_outer.ravel()]), group)
    n, d = round(float(packed[0])), total.shape[0]
    total, total_outer = packed[1 : d + 1], packed[d + 1 :].reshape(d, d)
    return pca_from_moments(n, total, total_outer, dim=dim, power=power)


def _assign(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if x.shape[0] == 0:  # faiss wants at least one query
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    return assign(x, centroids)


def _reduce_stats(
    sums: np.ndarray, counts: np.ndarray, objective: float, group: ProcessGroup | None
) -> tuple[np.ndarray, np.ndarray, float]:
    """All-reduce the M-step statistics in one float64 buffer (one collective, not three).

    Counts travel as float64, exact below 2**53 points.
    """
    k, dim = sums.shape
    packed = np.concatenate([sums.ravel(), counts.astype(np.float64), [objective]])
    packed = all_reduce_sum_np(packed, group)
    counts = np.rint(packed[k * dim : k * dim + k]).astype(np.int64)
    return packed[: k * dim].reshape(k, dim), counts, float(packed[-1])


def _shared_initial_centroids(
    x: np.ndarray,
    shards: Shards,
    k: int,
    init: np.ndarray | None,
    rng: np.random.Generator,
    group: ProcessGroup | None,
) -> np.ndarray:
    if init is None:
        # The rows single-process kmeans draws from the same seed; each one's owner fills it
        # in and the sum (x + 0 is exact) assembles them on every rank.
        rows = np.sort(rng.choice(shards.n, size=k, replace=False))
        where, local = _local_rows(rows, shards)
        centroids = np.zeros((k, shards.dim), dtype=np.float32)
        centroids[where] = x[local]
        return all_reduce_sum_np(centroids, group)
    # With an init, kmeans' helper only checks it against D and copies it.
    return initial_centroids(x, k, init, rng)


def _fill_empty(
    x: np.ndarray,
    assignments: np.ndarray,
    centroids: np.ndarray,
    counts: np.ndarray,
    rng: np.random.Generator,
    group: ProcessGroup | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`~deepercluster.cluster.reseed.fill_empty` with global counts and positions.

    Per round: an all-reduce of 2p int64 (each donor's size and movers) and, only if some
    donor's members all chose one side, an all-gather of p int64 per rank (members before
    this rank, for the ``ceil(n / 2)`` split in global index order). The new global counts
    follow from those numbers, so no further all-reduce is needed.

    Returns:
        assignments, centroids, pairs (as ``fill_empty``) and the (k,) global counts.
    """
    k = centroids.shape[0]
    assignments = assignments.copy()
    all_pairs = [np.zeros((0, 2), dtype=np.int64)]
    while (counts == 0).any():
        centroids, pairs = reseed_empty(centroids, counts, rng)
        empty, donors = pairs[:, 0], pairs[:, 1]
        members, new, move = split_sides(x, assignments, centroids, pairs)
        donor = assignments[members]
        local_size = np.bincount(donor, minlength=k)
        stats = np.stack([local_size[donors], np.bincount(donor[move], minlength=k)[donors]])
        stats = all_reduce_sum_np(stats, group)
        size, n_move = np.zeros(k, dtype=np.int64), np.zeros(k, dtype=np.int64)
        size[donors], n_move[donors] = stats[0], stats[1]
        one_sided = (n_move[donors] == 0) | (n_move[donors] == size[donors])
        offset = None
        if one_sided.any():
            before = all_gather_cat_np(local_size[donors], group).reshape(-1, donors.size)
            offset = np.zeros(k, dtype=np.int64)
            offset[donors] = before[: rank(group)].sum(axis=0)
        move = halve_one_sided(donor, move, size, n_move, offset)
        assignments[members[move]] = new[move]
        moved = np.where(one_sided, size[donors] // 2, n_move[donors])
        counts = counts.copy()
        counts[donors] -= moved
        counts[empty] = moved
        all_pairs.append(pairs)
    return assignments, centroids, np.concatenate(all_pairs), counts


def kmeans_distributed(
    x_local: np.ndarray,
    k: int,
    *,
    niter: int = 10,
    seed: int = 0,
    init: np.ndarray | None = None,
    group: ProcessGroup | None = None,
    threads: int | None = None,
) -> KMeansResult:
    """:func:`~deepercluster.cluster.kmeans.kmeans` over the shards of ``group``.

    The E-step is local (faiss); per-cluster sums (float64) and counts are all-reduced for the
    M-step; re-seeding runs identically on every rank from the global counts and the shared
    Generator; the final no-empty guarantee is the single-process one.

    Communication per iteration: one all-reduce of ``B = 8 * (k * D + k + 1)`` bytes (sums as
    k x D float64, counts as k float64, the objective), so a ring all-reduce sends and receives
    about ``2 * (W - 1) / W * B`` bytes per rank for W ranks; e.g. k = 80 000, D = 256: 164 MB
    all-reduced, ~0.3 GB per rank on the wire. An iteration in which clusters empty adds a
    second B-byte all-reduce (the sums after the splits) and per re-seeding round 16p bytes
    (+ 8pW when a donor splits one-sided), for p re-seeded clusters. Once per call: an
    all-gather of 24 bytes per rank (shard sizes), a 4kD-byte all-reduce assembling the initial
    centroids (none with ``init``), and the final 8(k + 1)-byte counts and objective.

    Args:
        x_local: (n_r, D) float32 this rank's features (n_r may be 0).
        k: number of clusters, 1 <= k <= N (N: rows over all ranks).
        niter: number of iterations; always run in full.
        seed: seeds the initial rows (the same global rows as ``kmeans``) and the donors.
        init: optional (k, D) initial centroids, the same on every rank.
        group: process group holding the shards (None: all ranks).
        threads: faiss OpenMP threads for this call (None: leave the current setting).

    Returns:
        The :class:`~deepercluster.cluster.kmeans.KMeansResult`: ``assignments`` (n_r,) for
        this rank's rows; centroids, objectives and ``n_reseeded`` global and the same on
        every rank.

    Raises:
        ValueError: on every rank, for a bad shard anywhere, ``k`` out of [1, N], negative
            ``niter`` or a mis-shaped ``init``.
    """
    x_local, shards = locate_shards(x_local, group)
    if k < 1:
        raise ValueError(f"cluster.k ({k}) must be at least 1")
    check_k_fits(k, shards.n)
    if niter < 0:
        raise ValueError(f"cluster.niter ({niter}) must be >= 0")
    rng = np.random.default_rng(seed)
    centroids = _shared_initial_centroids(x_local, shards, k, init, rng, group)
    n_reseeded = 0
    objectives: list[float] = []
    with faiss_threads(threads):
        for _ in range(niter):
            assignments, sq_distances = _assign(x_local, centroids)
            sums, counts = accumulate(x_local, assignments, k)
            objective = float(sq_distances.sum(dtype=np.float64))
            sums, counts, objective = _reduce_stats(sums, counts, objective, group)
            objectives.append(objective)
            if (counts == 0).any():
                assignments, centroids, pairs, _ = _fill_empty(
                    x_local, assignments, centroids, counts, rng, group
                )
                n_reseeded += pairs.shape[0]
                sums, counts = accumulate(x_local, assignments, k)
                sums, counts, _ = _reduce_stats(sums, counts, 0.0, group)
            centroids = update_centroids(sums, counts, centroids)
        assignments, sq_distances = _assign(x_local, centroids)
        local = np.append(np.bincount(assignments, minlength=k), 0).astype(np.float64)
        local[-1] = sq_distances.sum(dtype=np.float64)
        packed = all_reduce_sum_np(local, group)
        counts, objective = np.rint(packed[:k]).astype(np.int64), float(packed[-1])
    if (counts == 0).any():
        assignments, centroids, pairs, counts = _fill_empty(
            x_local, assignments, centroids, counts, rng, group
        )
        n_reseeded += pairs.shape[0]
        # As kmeans: the split clusters get their members' means, the movers are re-measured.
        touched = np.unique(pairs)
        sums = all_reduce_sum_np(accumulate(x_local, assignments, k)[0][touched], group)
        centroids[touched] = sums / counts[touched, None]
        moved = np.flatnonzero(np.isin(assignments, touched))
        sq_distances[moved] = squared_distances(x_local[moved], centroids[assignments[moved]])
        local_objective = np.array([sq_distances.sum(dtype=np.float64)])
        objective = float(all_reduce_sum_np(local_objective, group)[0])
    return KMeansResult(
        centroids=centroids,
        assignments=assignments,
        objective=objective,
        n_reseeded=n_reseeded,
        objectives=tuple(objectives),
    )


def _nearest_within_surplus(
    distance: np.ndarray, donor: np.ndarray, surplus: np.ndarray, limit: int
) -> np.ndarray:
    """Positions of the ``limit`` nearest candidates, each donor giving at most its surplus.

    The exact selection of ``balance_super_clusters`` on candidates in ascending image order:
    order (distance, donor, index), the same total order on a rank's shortlist and globally.
    """
    order = np.lexsort((distance, donor))
    group_start = np.searchsorted(donor[order], donor[order], side="left")
    allowed = np.arange(order.size) - group_start < surplus[donor[order]]
    kept = order[allowed]
    chosen: np.ndarray = kept[np.argsort(distance[kept], kind="stable")[:limit]]
    return chosen


def balance_distributed(
    x: np.ndarray,
    assignments: np.ndarray,
    centroids: np.ndarray,
    min_size: int,
    shards: Shards,
    group: ProcessGroup | None,
) -> tuple[np.ndarray, int]:
    """:func:`~deepercluster.cluster.hierarchical.balance_super_clusters` across shards.

    The global choice of the ``deficit`` nearest images is contained in the union of every
    rank's own choice (a rank's shortlist, capped per donor by the global surplus, ranks each of
    those images no later than the global list does), so only that shortlist is gathered:
    at most ``deficit`` (distance, donor, index) triples per rank and undersized super-cluster.
    """
    m = centroids.shape[0]
    assignments = assignments.copy()
    counts = all_reduce_sum_np(np.bincount(assignments, minlength=m).astype(np.int64), group)
    undersized = np.flatnonzero(counts < min_size)
    n_moved = 0
    sq_norms = np.einsum("ij,ij->i", x, x)
    for s in undersized:
        deficit = int(min_size - counts[s])
        surplus = counts - min_size
        candidates = np.flatnonzero(surplus[assignments] > 0)
        distance = sq_norms[candidates] - 2.0 * (x @ centroids[s])[candidates]
        donor = assignments[candidates]
        mine = _nearest_within_surplus(distance, donor, surplus, deficit)
        # float32 distances and int ids below 2**53 are exact in float64.
        triples = np.stack(
            [distance[mine], donor[mine], candidates[mine] + shards.offset], axis=1
        ).astype(np.float64)
        # Rank order, and each shortlist lists equal (distance, donor) keys in index order:
        # positions break ties by global index, as in the single-process candidate list.
        gathered = all_gather_cat_np(triples.reshape(-1, 3), group)
        gathered_donor = gathered[:, 1].astype(np.int64)
        chosen = _nearest_within_surplus(gathered[:, 0], gathered_donor, surplus, deficit)
        rows = np.sort(gathered[chosen, 2].astype(np.int64))
        assignments[_local_rows(rows, shards)[1]] = s
        counts[s] += chosen.size
        counts -= np.bincount(gathered_donor[chosen], minlength=m)
        n_moved += deficit
    return assignments, n_moved


def one_cluster_distributed(
    x: np.ndarray, shards: Shards, group: ProcessGroup | None
) -> KMeansResult:
    """Level 1 with m == 1: the global mean and its objective, without running k-means."""
    total = all_reduce_sum_np(x.sum(axis=0, dtype=np.float64), group)
    mean = (total / shards.n).astype(np.float32)
    objective = 0.0
    for start in range(0, x.shape[0], _BLOCK_ROWS):
        block = squared_distances(x[start : start + _BLOCK_ROWS], mean)
        objective += float(block.sum(dtype=np.float64))
    return KMeansResult(
        centroids=mean[None],
        assignments=np.zeros(x.shape[0], dtype=np.int64),
        objective=float(all_reduce_sum_np(np.array([objective]), group)[0]),
        n_reseeded=0,
        objectives=(),
    )


def level1_sample_distributed(
    x_local: np.ndarray, shards: Shards, sample: int, m: int, seed: int, group: ProcessGroup | None
) -> Level1Sample | None:
    """This rank's part of the level-1 sample (the same global rows as in one process), with
    a collective ``assign_all`` (every rank must call it); None when level 1 runs on every row.
    """

    def assign_all(centroids: np.ndarray) -> tuple[np.ndarray, float]:
        labels, sq_distances = _assign(x_local, centroids)
        total = np.array([sq_distances.sum(dtype=np.float64)])
        return labels, float(all_reduce_sum_np(total, group)[0])

    return draw_level1_sample(
        shards.n, sample, m, seed, assign_all, lambda rows: _local_rows(rows, shards)[1]
    )


def hierarchical_kmeans_distributed(
    x_local: np.ndarray,
    *,
    k: int,
    m: int,
    niter: int = 10,
    seed: int = 0,
    init: HierarchicalResult | None = None,
    group: ProcessGroup | None = None,
    threads: int | None = None,
    level1_sample: int = 0,
) -> HierarchicalResult:
    """:func:`~deepercluster.cluster.hierarchical.hierarchical_kmeans` over the shards.

    Level 1 runs :func:`kmeans_distributed` on all ranks of ``group``; the balancing gathers
    per-rank shortlists (see ``balance_distributed``); level 2 runs :func:`kmeans_distributed`
    once per super-cluster, again on all ranks, each contributing its members of that super-cluster
    (possibly none). Level 2 therefore all-reduces ``8 * (k/m * D + k/m + 1)`` bytes per
    iteration, m times in sequence. Paper [0] instead gives each super-cluster its own group
    of ranks; that needs the members' features moved to the group (point-to-point traffic of
    the whole collection), which ``deepercluster.distributed`` does not offer yet.

    Args:
        x_local: (n_r, D) float32 this rank's features, PCA-whitened and L2-normalised.
        k: total number of sub-clusters, a multiple of m, at most N.
        m: number of super-clusters.
        niter: k-means iterations at each level.
        seed: clustering seed (same streams as the single-process function).
        init: previous clustering (the same on every rank) to warm-start the centroids from.
        group: process group holding the shards (None: all ranks).
        threads: faiss OpenMP threads for this call (None: leave the current setting).
        level1_sample: fit level 1 on this many rows drawn over the collection (the same rows
            as in one process), then assign every row; 0: on every row.

    Returns:
        The :class:`~deepercluster.cluster.hierarchical.HierarchicalResult` with (n_r,)
        ``super_assignments`` / ``sub_assignments`` for this rank's rows; centroids,
        objectives and counters are global and the same on every rank.
    """
    x_local, shards = locate_shards(x_local, group)
    if m < 1:
        raise ValueError(f"cluster.super_clusters ({m}) must be at least 1")
    if k < 1 or k % m != 0:
        raise ValueError(f"cluster.k ({k}) must be divisible by cluster.super_clusters ({m})")
    check_k_fits(k, shards.n)
    if init is not None:
        check_init(init, k, m, shards.dim)
    with faiss_threads(threads):
        # Both levels over all ranks: each rank contributes its members of every cluster.
        return two_levels(
            n=len(x_local),
            dim=shards.dim,
            k=k,
            m=m,
            init=init,
            cluster=lambda _run, rows, kk, sd, ini: kmeans_distributed(
                x_local if rows is None else x_local[rows],
                kk,
                niter=niter,
                seed=sd,
                init=ini,
                group=group,
            ),
            one_cluster=lambda: one_cluster_distributed(x_local, shards, group),
            balance=lambda a, c, size: balance_distributed(x_local, a, c, size, shards, group),
            seed=seed,
            sample=level1_sample_distributed(x_local, shards, level1_sample, m, seed, group),
        )
