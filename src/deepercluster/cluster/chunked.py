"""PCA and hierarchical k-means over features read block by block (bounded memory).

The same algorithms as :mod:`~deepercluster.cluster.preprocess`, :mod:`~.kmeans` and
:mod:`~.hierarchical`, for features that live in a :class:`~.store.FeatureStore` on disk:
the PCA is fitted from float64 moments summed over blocks, every k-means E-step and M-step
streams the rows through faiss block by block, and only per-row integers (assignments) and
the centroids stay in memory. Re-seeding of empty clusters follows
:func:`~.reseed.fill_empty` exactly (its two halves, :func:`~.reseed.split_sides` and
:func:`~.reseed.halve_one_sided`, only ever see one block at a time).

Memory: about ``block_rows * D * 4`` bytes for a block, plus 8 bytes (assignments) and 4
bytes (distances) per row, plus ``4 m`` bytes per row while balancing the super-clusters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np

from deepercluster.cluster.hierarchical import ClusterRun, HierarchicalResult, two_levels
from deepercluster.cluster.kmeans import (
    KMeansResult,
    accumulate,
    assign,
    lloyd,
    squared_distances,
    update_centroids,
)
from deepercluster.cluster.level1_sample import draw_level1_sample
from deepercluster.cluster.preprocess import PCAWhitening, pca_from_moments
from deepercluster.cluster.reseed import halve_one_sided, reseed_empty, split_sides

__all__ = [
    "RowSource",
    "assign_chunked",
    "balance_chunked",
    "fit_pca_chunked",
    "hierarchical_kmeans_chunked",
    "kmeans_chunked",
    "moments_chunked",
    "row_blocks",
]


class RowSource(Protocol):
    """What the chunked algorithms read: a (rows, dim) float matrix, by range or by index."""

    rows: int
    dim: int

    def read(self, start: int, stop: int) -> np.ndarray: ...

    def take(self, rows: np.ndarray) -> np.ndarray: ...


def row_blocks(
    source: RowSource, block_rows: int, members: np.ndarray | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Blocks of rows: (position of the block's first row among ``members``, (b, D) rows).

    Args:
        source: the matrix.
        block_rows: rows read at once (the memory bound).
        members: (n,) ascending row indices to visit; None visits every row.
    """
    if members is None:
        for start in range(0, source.rows, block_rows):
            yield start, source.read(start, min(start + block_rows, source.rows))
        return
    for lo in range(0, len(members), block_rows):
        wanted = members[lo : lo + block_rows]
        span = int(wanted[-1]) + 1 - int(wanted[0])
        if span > 64 * len(wanted):  # very sparse: one small read per row beats the sweep
            yield lo, source.take(wanted)
            continue
        # Dense enough: sweep the span in windows of at most block_rows rows and gather.
        out = np.empty((len(wanted), source.dim), np.float32)
        done = 0
        while done < len(wanted):
            first = int(wanted[done])
            stop = min(first + block_rows, source.rows)
            upto = int(np.searchsorted(wanted, stop))
            out[done:upto] = source.read(first, stop)[wanted[done:upto] - first]
            done = upto
        yield lo, out


def fit_pca_chunked(
    source: RowSource,
    *,
    dim: int,
    power: float = 0.5,
    rows: np.ndarray | None = None,
    sample: int | None = None,
    seed: int = 0,
    block_rows: int = 65536,
) -> PCAWhitening:
    """:func:`~deepercluster.cluster.preprocess.fit_pca` over rows streamed from ``source``.

    Args:
        source: the (N, D) features.
        dim, power: as :func:`~deepercluster.cluster.preprocess.pca_from_moments`.
        rows: ascending indices of the rows to fit on (readable images); None = all.
        sample: fit on this many of them, drawn as ``fit_pca`` draws them; None = all.
        seed: seeds the sample.
        block_rows: rows per block.
    """
    members = np.arange(source.rows) if rows is None else rows
    if sample is not None and sample < len(members):
        if sample < 2:
            raise ValueError(f"cluster.pca_sample ({sample}) must be >= 2")
        picks = np.random.default_rng(seed).choice(len(members), size=sample, replace=False)
        members = members[np.sort(picks)]
    total, outer = moments_chunked(source, members, block_rows)
    return pca_from_moments(len(members), total, outer, dim=dim, power=power)


def moments_chunked(
    source: RowSource, rows: np.ndarray, block_rows: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """Sum of the rows and of their outer products, float64, over ascending ``rows``.

    Returns:
        total: (D,) float64; total_outer: (D, D) float64 (see ``feature_moments``).
    """
    total = np.zeros(source.dim, np.float64)
    outer = np.zeros((source.dim, source.dim), np.float64)
    if len(rows) == 0:
        return total, outer
    for _, block in row_blocks(source, block_rows, rows):
        block64 = block.astype(np.float64)
        total += block64.sum(axis=0)
        outer += block64.T @ block64
    return total, outer


def kmeans_chunked(
    source: RowSource,
    k: int,
    *,
    members: np.ndarray | None = None,
    niter: int = 10,
    seed: int = 0,
    init: np.ndarray | None = None,
    block_rows: int = 65536,
) -> KMeansResult:
    """:func:`~deepercluster.cluster.kmeans.kmeans` with the rows streamed block by block.

    The same initial rows, iterations, re-seeding and final guarantee (no empty cluster);
    only the summation order of the M-step differs (blocks), so centroids agree with the
    in-memory k-means to float rounding. Rows that fit in one block are read once and
    clustered in memory (:func:`~deepercluster.cluster.kmeans.lloyd`): the same result.

    Args:
        source: the (N, D) float32 features.
        k: clusters, 1 <= k <= n.
        members: ascending row indices to cluster (one super-cluster); None = all rows.
        niter, seed, init: as ``kmeans``.
        block_rows: rows per block (the memory bound).

    Returns:
        A ``KMeansResult`` whose assignments follow ``members`` (or the rows).
    """
    n = source.rows if members is None else len(members)
    if not 1 <= k <= n:
        raise ValueError(f"cluster.k ({k}) must be in [1, {n}] (the number of images)")
    if niter < 0:
        raise ValueError(f"cluster.niter ({niter}) must be >= 0")
    if init is not None and init.shape != (k, source.dim):
        raise ValueError(f"init has shape {init.shape}, expected {(k, source.dim)}")
    if init is not None and not np.isfinite(init).all():
        raise ValueError("init contains NaN or inf; pass init=None to start from random rows")
    if n <= block_rows:
        # The rows fit in one block (a level-1 sample, a super-cluster of up to block_rows
        # images): read them once and run the in-memory loop, rather than reading them again
        # at every E-step and M-step. The in-memory k-means' result on those rows.
        ((_, rows),) = row_blocks(source, block_rows, members)
        return lloyd(np.ascontiguousarray(rows), k, niter=niter, seed=seed, init=init)
    rng = np.random.default_rng(seed)
    if init is None:
        picks = np.sort(rng.choice(n, size=k, replace=False))
        centroids = source.take(picks if members is None else members[picks])
    else:
        centroids = np.array(init, dtype=np.float32, copy=True)

    def blocks() -> Iterator[tuple[int, np.ndarray]]:
        return row_blocks(source, block_rows, members)

    def e_step(c: np.ndarray, with_sums: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The E-step, and with ``with_sums`` the M-step's sums in the same pass over the rows:
        each block's sums are taken while it is in memory, for its new labels. Valid unless a
        cluster empties (the re-seeding then moves rows, and the sums are taken again); the
        same block order, so the same sums as a pass of their own."""
        labels, distances = np.empty(n, np.int64), np.empty(n, np.float32)
        sums = np.zeros((k, source.dim) if with_sums else (0, 0), np.float64)
        for pos, x in blocks():
            block = slice(pos, pos + len(x))
            labels[block], distances[block] = assign(x, c)
            if with_sums:
                sums += accumulate(x, labels[block], k)[0]
        return labels, distances, sums

    def sums_of(labels: np.ndarray) -> np.ndarray:
        sums = np.zeros((k, source.dim), np.float64)
        for pos, x in blocks():
            sums += accumulate(x, labels[pos : pos + len(x)], k)[0]
        return sums

    def fill_empty(labels: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        counts = np.bincount(labels, minlength=k)
        all_pairs = [np.zeros((0, 2), np.int64)]
        while (counts == 0).any():
            c, pairs = reseed_empty(c, counts, rng)
            parts = [
                (idx + pos, new, move)
                for pos, x in blocks()
                for idx, new, move in [split_sides(x, labels[pos : pos + len(x)], c, pairs)]
            ]
            moved_rows = np.concatenate([p[0] for p in parts])
            new = np.concatenate([p[1] for p in parts])
            move = np.concatenate([p[2] for p in parts])
            donor = labels[moved_rows]
            size = np.bincount(donor, minlength=k)
            move = halve_one_sided(donor, move, size, np.bincount(donor[move], minlength=k))
            labels = labels.copy()
            labels[moved_rows[move]] = new[move]
            counts = np.bincount(labels, minlength=k)
            all_pairs.append(pairs)
        return labels, c, np.concatenate(all_pairs)

    n_reseeded = 0
    objectives: list[float] = []
    for _ in range(niter):
        # One read of the rows per iteration, not two (the features may be on a disk).
        labels, distances, sums = e_step(centroids, with_sums=True)
        objectives.append(float(distances.sum(dtype=np.float64)))
        labels, centroids, pairs = fill_empty(labels, centroids)
        n_reseeded += pairs.shape[0]
        if pairs.shape[0] > 0:
            sums = sums_of(labels)
        centroids = update_centroids(sums, np.bincount(labels, minlength=k), centroids)
    labels, distances, _ = e_step(centroids, with_sums=False)
    labels, centroids, pairs = fill_empty(labels, centroids)
    if pairs.shape[0] > 0:
        n_reseeded += pairs.shape[0]
        touched = np.unique(pairs)
        counts = np.bincount(labels, minlength=k)
        centroids[touched] = sums_of(labels)[touched] / counts[touched, None]
        moved = np.flatnonzero(np.isin(labels, touched))
        rows = moved if members is None else members[moved]
        distances[moved] = squared_distances(source.take(rows), centroids[labels[moved]])
    return KMeansResult(
        centroids=centroids,
        assignments=labels,
        objective=float(distances.sum(dtype=np.float64)),
        n_reseeded=n_reseeded,
        objectives=tuple(objectives),
    )


def balance_chunked(
    source: RowSource,
    assignments: np.ndarray,
    centroids: np.ndarray,
    min_size: int,
    block_rows: int = 65536,
) -> tuple[np.ndarray, int]:
    """:func:`~deepercluster.cluster.hierarchical.balance_super_clusters`, rows streamed.

    The (N, m) scores ``|x|^2 - 2 <x, c_s>`` are computed in one pass; the moves are then
    chosen exactly as the in-memory version chooses them.
    """
    m = centroids.shape[0]
    assignments = assignments.copy()
    counts = np.bincount(assignments, minlength=m)
    undersized = np.flatnonzero(counts < min_size)
    if undersized.size == 0:
        return assignments, 0
    scores = np.empty((source.rows, m), np.float32)
    for pos, x in row_blocks(source, block_rows):
        scores[pos : pos + len(x)] = np.einsum("ij,ij->i", x, x)[:, None] - 2.0 * (x @ centroids.T)
    n_moved = 0
    for s in undersized:
        deficit = int(min_size - counts[s])
        surplus = counts - min_size
        candidates = np.flatnonzero(surplus[assignments] > 0)
        distance = scores[candidates, s]
        donor = assignments[candidates]
        order = np.lexsort((distance, donor))
        group_start = np.searchsorted(donor[order], donor[order], side="left")
        kept = order[np.arange(order.size) - group_start < surplus[donor[order]]]
        chosen = kept[np.argsort(distance[kept], kind="stable")[:deficit]]
        assignments[candidates[chosen]] = s
        counts = np.bincount(assignments, minlength=m)
        n_moved += deficit
    return assignments, n_moved


def assign_chunked(
    source: RowSource, centroids: np.ndarray, block_rows: int = 65536
) -> tuple[np.ndarray, float]:
    """Every row's nearest centroid and the objective, rows streamed block by block.

    Args:
        source: the (N, D) float32 features.
        centroids: (k, D) float32 centroids.
        block_rows: rows per block.

    Returns:
        (N,) int64 labels and the float sum of squared distances.
    """
    labels = np.empty(source.rows, np.int64)
    objective = 0.0
    for pos, x in row_blocks(source, block_rows):
        labels[pos : pos + len(x)], sq_distances = assign(x, centroids)
        objective += float(sq_distances.sum(dtype=np.float64))
    return labels, objective


def hierarchical_kmeans_chunked(
    source: RowSource,
    *,
    k: int,
    m: int,
    seed: int,
    cluster: ClusterRun,
    init: HierarchicalResult | None = None,
    block_rows: int = 65536,
    on_level_done: Callable[[int, int], None] | None = None,
    level1_sample: int = 0,
    workers: int | None = 1,
) -> HierarchicalResult:
    """The two-level recipe of :func:`~.hierarchical.two_levels` over a streamed source.

    Args:
        source: the (N, d) whitened features.
        k, m: sub-clusters in all and super-clusters.
        seed: level-1 seed; level 2 of super-cluster s uses :func:`~.subcluster_seed`.
        cluster: the flat k-means to run, ``(run, members, k, seed, init) -> KMeansResult``
            (usually :func:`kmeans_chunked`, possibly behind a cache of finished runs).
        init: a previous clustering to warm-start from.
        block_rows: rows per block.
        on_level_done: progress callback ``(runs done, m + 1)``.
        level1_sample: fit level 1 on this many random rows, then assign every row (read
            once more); 0: on every row.
        workers: level-2 runs at once, in threads (None:
            :func:`~.level2_runs.level2_workers`); ``cluster`` and ``source`` must then be
            thread-safe (:class:`~.store.FeatureStore` is: every read opens the file). Each
            run in flight holds up to ``block_rows`` of its rows in float32 and float64.
            Any value gives the same clustering up to float rounding (a run's faiss threads
            can move distances by an ulp on some CPUs: see ``kmeans.assign``).
    """
    if k % m or k > source.rows:
        raise ValueError(f"cluster.k ({k}) must be a multiple of m ({m}) and <= N ({source.rows})")

    def one_cluster() -> KMeansResult:
        total = np.zeros(source.dim, np.float64)
        for _, x in row_blocks(source, block_rows):
            total += x.sum(axis=0, dtype=np.float64)
        mean = (total / source.rows).astype(np.float32)
        objective = sum(
            float(squared_distances(x, mean[None]).sum(dtype=np.float64))
            for _, x in row_blocks(source, block_rows)
        )
        return KMeansResult(mean[None], np.zeros(source.rows, np.int64), objective, 0, ())

    return two_levels(
        n=source.rows,
        dim=source.dim,
        k=k,
        m=m,
        init=init,
        cluster=cluster,
        one_cluster=one_cluster,
        balance=lambda a, c, size: balance_chunked(source, a, c, size, block_rows),
        seed=seed,
        on_level_done=on_level_done,
        workers=workers,
        sample=draw_level1_sample(
            source.rows, level1_sample, m, seed, lambda c: assign_chunked(source, c, block_rows)
        ),
    )
