"""DeeperCluster's two-level clustering: m super-clusters, then k/m sub-clusters inside each.

Paper [0] section 3 ("Combining self-supervision and clustering", hierarchical
clustering): with k = 320 000 targets a flat k-means and a flat k-way head are too costly, so
the features are first split into m super-clusters, and each super-cluster is clustered
independently into k/m sub-clusters. Image i gets the pair (s_i, c_i), and its global label is
``s_i * (k // m) + c_i``. Per-iteration work drops from O(k) to O(m + k/m) per point, and the m
level-2 problems are independent (the reference runs them on separate process groups).

References:
    - [0] DeeperCluster: Caron et al., "Unsupervised Pre-Training of Image Features on
      Non-Curated Data", ICCV 2019, https://arxiv.org/abs/1905.01278
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from deepercluster.cluster.kmeans import (
    KMeansResult,
    check_features,
    faiss_threads,
    lloyd,
    squared_distances,
)
from deepercluster.cluster.level1_sample import Level1Sample, draw_level1_sample, nearest
from deepercluster.cluster.level2_runs import run_level2

__all__ = [
    "ClusterRun",
    "HierarchicalResult",
    "balance_super_clusters",
    "cluster_size_stats",
    "hierarchical_kmeans",
    "subcluster_seed",
]

ClusterRun = Callable[[int, np.ndarray | None, int, int, np.ndarray | None], KMeansResult]
"""``(run, members, k, seed, init) -> KMeansResult``: one flat k-means of the hierarchy over
the rows ``members`` ((n_s,) int64 indices; None = every row). ``run`` names it: 1 for level 1,
``2 + s`` for super-cluster s (what a store of finished runs files it under)."""

_BLOCK_ROWS = 65536

_KEYS = (
    "super_assignments",
    "sub_assignments",
    "super_centroids",
    "sub_centroids",
    "objective",
    "super_objective",
    "n_reseeded",
    "n_moved",
)


@dataclass(frozen=True)
class HierarchicalResult:
    """Outcome of :func:`hierarchical_kmeans`.

    Attributes:
        super_assignments: (N,) int64 super-cluster of every image, in [0, m).
        sub_assignments: (N,) int64 sub-cluster inside its super-cluster, in [0, k/m).
        super_centroids: (m, D) float32 level-1 centroids.
        sub_centroids: (m, k/m, D) float32 level-2 centroids, per super-cluster.
        objective: level-2 sum of squared distances to the sub-centroids (the one to log).
        super_objective: level-1 k-means objective (before the balancing moves).
        n_reseeded: empty clusters re-seeded at both levels.
        n_moved: images moved between super-clusters by :func:`balance_super_clusters`.
    """

    super_assignments: np.ndarray
    sub_assignments: np.ndarray
    super_centroids: np.ndarray
    sub_centroids: np.ndarray
    objective: float
    super_objective: float
    n_reseeded: int
    n_moved: int

    @property
    def m(self) -> int:
        """Number of super-clusters."""
        return int(self.sub_centroids.shape[0])

    @property
    def k(self) -> int:
        """Total number of sub-clusters, m * (k/m)."""
        return int(self.sub_centroids.shape[0] * self.sub_centroids.shape[1])

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64 global sub-cluster id ``super * (k // m) + sub``, in [0, k)."""
        per_super = self.sub_centroids.shape[1]
        labels: np.ndarray = self.super_assignments * per_super + self.sub_assignments
        return labels

    def cluster_sizes(self) -> np.ndarray:
        """(k,) int64 number of images per global sub-cluster."""
        return np.bincount(self.labels, minlength=self.k).astype(np.int64)

    def to_dict(self) -> dict[str, np.ndarray]:
        """Plain arrays for a checkpoint (scalars as 0-d arrays)."""
        return {
            "super_assignments": self.super_assignments,
            "sub_assignments": self.sub_assignments,
            "super_centroids": self.super_centroids,
            "sub_centroids": self.sub_centroids,
            "objective": np.asarray(self.objective, dtype=np.float64),
            "super_objective": np.asarray(self.super_objective, dtype=np.float64),
            "n_reseeded": np.asarray(self.n_reseeded, dtype=np.int64),
            "n_moved": np.asarray(self.n_moved, dtype=np.int64),
        }

    @classmethod
    def from_dict(cls, state: dict[str, np.ndarray]) -> HierarchicalResult:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: missing/unexpected keys or inconsistent shapes.
        """
        if set(state) != set(_KEYS):
            raise ValueError(
                f"clustering state has keys {sorted(state)}, expected {sorted(_KEYS)}; "
                "the checkpoint is not from HierarchicalResult.to_dict"
            )
        result = cls(
            super_assignments=np.asarray(state["super_assignments"], dtype=np.int64),
            sub_assignments=np.asarray(state["sub_assignments"], dtype=np.int64),
            super_centroids=np.asarray(state["super_centroids"], dtype=np.float32),
            sub_centroids=np.asarray(state["sub_centroids"], dtype=np.float32),
            objective=float(state["objective"]),
            super_objective=float(state["super_objective"]),
            n_reseeded=int(state["n_reseeded"]),
            n_moved=int(state["n_moved"]),
        )
        m, _, dim = result.sub_centroids.shape
        if (
            result.super_centroids.shape != (m, dim)
            or result.super_assignments.shape != result.sub_assignments.shape
            or result.super_assignments.ndim != 1
        ):
            raise ValueError(
                "clustering state has inconsistent shapes: super_centroids "
                f"{result.super_centroids.shape}, sub_centroids {result.sub_centroids.shape}, "
                f"assignments {result.super_assignments.shape} / {result.sub_assignments.shape}"
            )
        return result


def cluster_size_stats(labels: np.ndarray, k: int) -> dict[str, float]:
    """Summary of the cluster sizes, for logging.

    Args:
        labels: (N,) int cluster ids in [0, k).
        k: number of clusters.

    Returns:
        ``{"min", "median", "max", "n_empty"}`` over the k cluster sizes.
    """
    sizes = np.bincount(labels, minlength=k)
    return {
        "min": float(sizes.min()),
        "median": float(np.median(sizes)),
        "max": float(sizes.max()),
        "n_empty": float(np.count_nonzero(sizes == 0)),
    }


def subcluster_seed(seed: int, super_cluster: int) -> int:
    """Seed of the level-2 k-means of one super-cluster, independent of the level-1 stream.

    Args:
        seed: the clustering seed.
        super_cluster: index s of the super-cluster.

    Returns:
        A 32-bit seed derived from ``(seed, s)`` with ``np.random.SeedSequence``.
    """
    sequence = np.random.SeedSequence(seed, spawn_key=(super_cluster,))
    return int(sequence.generate_state(1)[0])


def balance_super_clusters(
    x: np.ndarray, assignments: np.ndarray, centroids: np.ndarray, min_size: int
) -> tuple[np.ndarray, int]:
    """Give every super-cluster at least ``min_size`` images by moving images into it.

    A super-cluster with fewer than k/m images cannot host k/m non-empty sub-clusters (the
    reference code ignores this and trains on empty sub-clusters, whose targets never occur).
    For each undersized super-cluster s, in index order, the images nearest to s's centroid
    are taken from super-clusters with a surplus, never pushing one below ``min_size``.

    Args:
        x: (N, D) float32 images' features.
        assignments: (N,) int64 super-cluster ids in [0, m).
        centroids: (m, D) float32 super-centroids.
        min_size: required size k/m; ``m * min_size <= N``.

    Returns:
        assignments: (N,) int64 balanced copy.
        n_moved: number of images that changed super-cluster.
    """
    m = centroids.shape[0]
    assignments = assignments.copy()
    counts = np.bincount(assignments, minlength=m)
    n_moved = 0
    undersized = np.flatnonzero(counts < min_size)
    if undersized.size == 0:
        return assignments, 0
    # Distances via |x|^2 - 2<x, c>, so no (N, D) temporary is made per super-cluster.
    sq_norms = np.einsum("ij,ij->i", x, x)
    for s in undersized:
        deficit = int(min_size - counts[s])
        surplus = counts - min_size
        candidates = np.flatnonzero(surplus[assignments] > 0)
        distance = sq_norms[candidates] - 2.0 * (x @ centroids[s])[candidates]
        donor = assignments[candidates]
        # Rank every candidate inside its donor by distance; a donor gives at most its surplus.
        order = np.lexsort((distance, donor))
        group_start = np.searchsorted(donor[order], donor[order], side="left")
        allowed = np.arange(order.size) - group_start < surplus[donor[order]]
        kept = order[allowed]
        chosen = kept[np.argsort(distance[kept], kind="stable")[:deficit]]
        assignments[candidates[chosen]] = s
        counts = np.bincount(assignments, minlength=m)
        n_moved += deficit
    return assignments, n_moved


def one_cluster(x: np.ndarray) -> KMeansResult:
    """Level 1 with m == 1: the mean, without running k-means."""
    mean = x.mean(axis=0, dtype=np.float64).astype(np.float32)
    objective = 0.0
    for start in range(0, x.shape[0], _BLOCK_ROWS):
        block = squared_distances(x[start : start + _BLOCK_ROWS], mean)
        objective += float(block.sum(dtype=np.float64))
    return KMeansResult(
        centroids=mean[None],
        assignments=np.zeros(x.shape[0], dtype=np.int64),
        objective=objective,
        n_reseeded=0,
        objectives=(),
    )


def check_init(init: HierarchicalResult, k: int, m: int, dim: int) -> None:
    if init.m != m or init.k != k or init.super_centroids.shape[1] != dim:
        raise ValueError(
            f"warm start from a clustering with k={init.k}, m={init.m}, "
            f"D={init.super_centroids.shape[1]} but asked for k={k}, m={m}, D={dim}; "
            "pass init=None (or keep cluster.k, cluster.super_clusters and cluster.pca_dim)"
        )


def hierarchical_kmeans(
    x: np.ndarray,
    *,
    k: int,
    m: int,
    niter: int = 10,
    seed: int = 0,
    init: HierarchicalResult | None = None,
    threads: int | None = None,
    workers: int | None = None,
    on_level_done: Callable[[int, int], None] | None = None,
    level1_sample: int = 0,
) -> HierarchicalResult:
    """Two-level k-means of DeeperCluster (paper [0] section 3).

    Level 1 clusters all images into m super-clusters (seed ``seed``); undersized
    super-clusters are then topped up (:func:`balance_super_clusters`); level 2 clusters each
    super-cluster's images into k/m sub-clusters (seed :func:`subcluster_seed`). With m == 1
    level 1 is trivial and level 2 is a flat k-means of everything. No cluster of either level
    ends empty.

    Args:
        x: (N, D) float32 features, usually PCA-whitened and L2-normalised.
        k: total number of sub-clusters (``cluster.k``), a multiple of m, at most N.
        m: number of super-clusters (``cluster.super_clusters``).
        niter: k-means iterations at each level.
        seed: clustering seed.
        init: previous clustering to warm-start from: its super-centroids initialise level 1
            and its sub-centroids of super-cluster s initialise s's level 2.
        threads: faiss OpenMP threads for this call (None: leave the current setting).
        workers: level-2 runs at once (None: :func:`~.level2_runs.level2_workers`); the
            result is the same for any value.
        on_level_done: called with (k-means runs done, m + 1) after level 1 and after each
            super-cluster's level 2 (progress bars; at paper scale level 2 takes hours).
        level1_sample: fit level 1 on this many random images, then assign every image
            (``cluster.level1_sample``, see :mod:`~.level1_sample`); 0: on every image.

    Returns:
        The :class:`HierarchicalResult`.

    Raises:
        ValueError: ``k`` not a multiple of ``m``, ``k > N``, an ``init`` of another shape, or
            a ``level1_sample`` below m (and not 0).
    """
    x = check_features(x)
    n, dim = x.shape
    if m < 1:
        raise ValueError(f"cluster.super_clusters ({m}) must be at least 1")
    if k < 1 or k % m != 0:
        raise ValueError(f"cluster.k ({k}) must be divisible by cluster.super_clusters ({m})")
    if k > n:
        raise ValueError(
            f"cluster.k ({k}) is larger than the number of images ({n}); lower cluster.k"
        )
    if init is not None:
        check_init(init, k, m, dim)
    sample = draw_level1_sample(n, level1_sample, m, seed, lambda c: nearest(x, c))
    with faiss_threads(threads):
        return two_levels(
            n=len(x),
            dim=x.shape[1],
            k=k,
            m=m,
            init=init,
            cluster=lambda _run, rows, kk, sd, ini: lloyd(
                x if rows is None else x[rows], kk, niter=niter, seed=sd, init=ini
            ),
            one_cluster=lambda: one_cluster(x),
            balance=lambda a, c, size: balance_super_clusters(x, a, c, size),
            seed=seed,
            on_level_done=on_level_done,
            workers=workers,
            sample=sample,
        )


def two_levels(
    *,
    n: int,
    dim: int,
    k: int,
    m: int,
    init: HierarchicalResult | None,
    cluster: ClusterRun,
    one_cluster: Callable[[], KMeansResult],
    balance: Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, int]],
    seed: int,
    on_level_done: Callable[[int, int], None] | None = None,
    workers: int | None = 1,
    sample: Level1Sample | None = None,
) -> HierarchicalResult:
    """The two-level recipe, shared by the in-memory, distributed and streamed clusterings.

    The rows themselves stay with the callables (an array, a rank's shard, a file on disk):
    this function only decides which rows each k-means run sees.

    Args:
        n, dim: number of rows (all of them, or this rank's shard) and their dimension D.
        k, m: total sub-clusters and super-clusters.
        init: previous clustering to warm-start from, or None.
        cluster: the flat k-means, ``(run, members, k, seed, init_centroids) ->
            KMeansResult`` (see :data:`ClusterRun`).
        one_cluster: the trivial level 1 when m == 1 (the mean of every row).
        balance: tops up super-clusters with fewer than k/m members,
            ``(assignments, centroids, min_size) -> (assignments, n_moved)``.
        seed: level-1 seed; level 2 of super-cluster s uses :func:`subcluster_seed`.
        on_level_done: progress callback ``(runs done, m + 1)``, always from this thread.
        workers: level-2 runs at once, in threads that split faiss' OpenMP threads (None:
            :func:`~.level2_runs.level2_workers`). Only for a ``cluster`` that is thread-safe
            and makes no collective call (not the distributed one). Any value gives the same
            clustering up to float rounding (a run's faiss threads can move distances by an
            ulp on some CPUs: see ``kmeans.assign``).
        sample: fit level 1 on these rows only, then assign every row
            (``cluster.level1_sample``); None: fit on every row.
    """
    per_super = k // m
    # ============ level 1: super-clusters ============
    if m == 1:
        level1 = one_cluster()
    else:
        rows = None if sample is None else sample.rows
        level1 = cluster(1, rows, m, seed, None if init is None else init.super_centroids)
        if sample is not None:
            level1 = sample.extend(level1)
    super_assignments, n_moved = balance(level1.assignments, level1.centroids, per_super)
    if on_level_done is not None:
        on_level_done(1, m + 1)

    # ============ level 2: sub-clusters inside each super-cluster ============
    def level2(s: int) -> tuple[np.ndarray, KMeansResult]:
        members = np.flatnonzero(super_assignments == s)
        result = cluster(
            2 + s,
            None if m == 1 else members,
            per_super,
            subcluster_seed(seed, s),
            None if init is None else init.sub_centroids[s],
        )
        return members, result

    runs = run_level2(level2, m, workers, on_level_done)
    sub_assignments = np.empty(n, dtype=np.int64)
    sub_centroids = np.empty((m, per_super, dim), dtype=np.float32)
    objective = 0.0
    n_reseeded = level1.n_reseeded
    for s, (members, result) in enumerate(runs):  # in super-cluster order: the same sums
        sub_assignments[members] = result.assignments
        sub_centroids[s] = result.centroids
        objective += result.objective
        n_reseeded += result.n_reseeded
    return HierarchicalResult(
        super_assignments=super_assignments,
        sub_assignments=sub_assignments,
        super_centroids=level1.centroids,
        sub_centroids=sub_centroids,
        objective=objective,
        super_objective=level1.objective,
        n_reseeded=n_reseeded,
        n_moved=n_moved,
    )
