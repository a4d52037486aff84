"""DeeperCluster's two-level clustering: m super-clusters, then k/m sub-clusters inside each.

Paper [0] section 3 ("Combining self-supervision and clustering", hierarchical
clustering): with k = 320 000 targets a flat k-means and a flat k-way head are too costly, so
the features are first split into m super-clusters, and each super-cluster is clustered
independently into k/m sub-clusters. Image i gets the pair (s_i, c_i), and its global label is
``s_i * (k // m) + c_i``. Per-iteration work drops from O(k) to O(m + k/m) per point, and the m
level-2 problems are independent (the reference runs them on separate process groups, see
:mod:`~.clustering_groups`).

Every level is the one k-means loop (:func:`~.kmeans.lloyd`) over
:class:`~.blocks.Blocks`, so this module serves features in memory (CPU or CUDA), streamed from
a store and sharded over the ranks of a process group alike. The level-2 runs go one after
the other: each already uses every core (or the GPU) through torch.

References:
    - [0] DeeperCluster: Caron et al., "Unsupervised Pre-Training of Image Features on
      Non-Curated Data", ICCV 2019, https://arxiv.org/abs/1905.01278
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from deepercluster import distributed
from deepercluster.cluster.balance import balance
from deepercluster.cluster.blocks import Blocks, Located
from deepercluster.cluster.kmeans import KMeansResult, lloyd, nearest, to_blocks
from deepercluster.cluster.level1_sample import sample_rows
from deepercluster.distributed import ProcessGroup

__all__ = [
    "ClusterRun",
    "HierarchicalResult",
    "cluster_size_stats",
    "hierarchical_kmeans",
    "level_one",
    "subcluster_seed",
]

ClusterRun = Callable[[int, Blocks, int, int, np.ndarray | None], KMeansResult]
"""``(run, rows, k, seed, init) -> KMeansResult``: one flat k-means of the hierarchy over
``rows``. ``run`` names it: 1 for level 1, ``2 + s`` for super-cluster s (what a store of
finished runs files it under: each run's inputs follow from the earlier runs' results)."""

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


def one_cluster(blocks: Blocks, where: Located, group: ProcessGroup | None) -> KMeansResult:
    """Level 1 with m == 1: the mean of every row, without running k-means."""
    total = torch.zeros(blocks.dim, dtype=torch.float64, device=blocks.device)
    for _, x in blocks:
        total += x.sum(dim=0, dtype=torch.float64)
    mean = (distributed.all_reduce_sum(total, group) / where.total).float()
    objective = torch.zeros(1, dtype=torch.float64, device=blocks.device)
    for _, x in blocks:
        objective += ((x - mean) ** 2).sum(dtype=torch.float64)
    return KMeansResult(
        centroids=mean[None].cpu().numpy(),
        assignments=np.zeros(blocks.n, dtype=np.int64),
        objective=float(distributed.all_reduce_sum(objective, group)[0]),
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


def check_sizes(k: int, m: int, n: int) -> None:
    """Raise the error naming the fix for an impossible (k, m) over n images."""
    if m < 1:
        raise ValueError(f"cluster.super_clusters ({m}) must be at least 1")
    if k < 1 or k % m != 0:
        raise ValueError(f"cluster.k ({k}) must be divisible by cluster.super_clusters ({m})")
    if k > n:
        raise ValueError(
            f"cluster.k ({k}) is larger than the number of images ({n}); lower cluster.k"
        )


def level_one(
    blocks: Blocks,
    where: Located,
    run: ClusterRun,
    *,
    k: int,
    m: int,
    seed: int,
    init: HierarchicalResult | None,
    level1_sample: int,
    group: ProcessGroup | None,
) -> tuple[KMeansResult, np.ndarray, int]:
    """Level 1 and the balancing: (level-1 result, balanced (n,) super-clusters, n_moved).

    With ``level1_sample`` the level-1 k-means is fitted on that many rows drawn over the
    whole collection (:func:`~.level1_sample.sample_rows`), then every row is assigned to its
    nearest super-centroid (one more pass); the objective becomes the whole collection's.
    """
    if m == 1:
        level1 = one_cluster(blocks, where, group)
    else:
        rows = sample_rows(where.total, level1_sample, m, seed)
        fit_on = blocks if rows is None else blocks.subset(where.local(rows)[1])
        level1 = run(1, fit_on, m, seed, None if init is None else init.super_centroids)
        if rows is not None:
            labels, dist = nearest(blocks, torch.as_tensor(level1.centroids, device=blocks.device))
            total = distributed.all_reduce_sum(dist.double().sum()[None], group)
            level1 = replace(level1, assignments=labels.cpu().numpy(), objective=float(total[0]))
    super_assignments, n_moved = balance(
        blocks, level1.assignments, level1.centroids, k // m, where, group
    )
    return level1, super_assignments, n_moved


def hierarchical_kmeans(
    x: np.ndarray | Tensor | Blocks,
    *,
    k: int,
    m: int,
    niter: int = 10,
    seed: int = 0,
    init: HierarchicalResult | None = None,
    init_method: str = "random",
    group: ProcessGroup | None = None,
    level1_sample: int = 0,
    on_level_done: Callable[[int, int], None] | None = None,
    wrap_run: Callable[[ClusterRun], ClusterRun] | None = None,
) -> HierarchicalResult:
    """Two-level k-means of DeeperCluster (paper [0] section 3), every rank of ``group`` alike.

    Level 1 clusters all images into m super-clusters (seed ``seed``); undersized
    super-clusters are then topped up (:func:`balance`); level 2 clusters each
    super-cluster's images into k/m sub-clusters (seed :func:`subcluster_seed`), one
    super-cluster after the other. With m == 1 level 1 is trivial and level 2 is a flat k-means
    of everything. No cluster of either level ends empty.

    Args:
        x: (n, D) float32 features (this rank's), usually PCA-whitened and L2-normalised: an
            array, a tensor (clustered on its device) or blocks of a store.
        k: total number of sub-clusters (``cluster.k``), a multiple of m, at most N.
        m: number of super-clusters (``cluster.super_clusters``).
        niter: k-means iterations at each level.
        seed: clustering seed.
        init: previous clustering to warm-start from: its super-centroids initialise level 1
            and its sub-centroids of super-cluster s initialise s's level 2.
        init_method: ``cluster.init``, ``random`` or ``kmeans++`` (without ``init``).
        group: the process group holding the rows (None: all ranks, or one process).
        level1_sample: fit level 1 on this many random images, then assign every image
            (``cluster.level1_sample``); 0: on every image.
        on_level_done: called with (k-means runs done, m + 1) after level 1 and after each
            super-cluster's level 2 (progress bars; at paper scale level 2 takes hours).
        wrap_run: wraps the flat k-means of each run (e.g. a store of finished runs).

    Returns:
        The :class:`HierarchicalResult` (this rank's rows' assignments).

    Raises:
        ValueError: ``k`` not a multiple of ``m``, ``k > N``, an ``init`` of another shape, or
            a ``level1_sample`` below m (and not 0).
    """
    blocks = to_blocks(x, group)
    where = blocks.locate(group)
    check_sizes(k, m, where.total)
    if init is not None:
        check_init(init, k, m, blocks.dim)

    def flat(_run: int, rows: Blocks, kk: int, sd: int, ini: np.ndarray | None) -> KMeansResult:
        return lloyd(rows, kk, niter=niter, seed=sd, init=ini, init_method=init_method, group=group)

    run = flat if wrap_run is None else wrap_run(flat)
    per_super = k // m
    level1, super_assignments, n_moved = level_one(
        blocks, where, run, k=k, m=m, seed=seed, init=init, level1_sample=level1_sample,
        group=group,
    )  # fmt: skip
    if on_level_done is not None:
        on_level_done(1, m + 1)
    sub_assignments = np.empty(blocks.n, dtype=np.int64)
    sub_centroids = np.empty((m, per_super, blocks.dim), dtype=np.float32)
    objective, n_reseeded = 0.0, level1.n_reseeded
    for s in range(m):
        members = np.flatnonzero(super_assignments == s)
        result = run(
            2 + s,
            blocks if m == 1 else blocks.subset(members),
            per_super,
            subcluster_seed(seed, s),
            None if init is None else init.sub_centroids[s],
        )
        sub_assignments[members] = result.assignments
        sub_centroids[s] = result.centroids
        objective += result.objective
        n_reseeded += result.n_reseeded
        if on_level_done is not None:
            on_level_done(s + 2, m + 1)
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
