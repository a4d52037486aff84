"""Lloyd k-means on float32 features: faiss for the E-step, our own M-step.

faiss 1.15's ``faiss.Kmeans`` stops early by default, silently subsamples to 256 points per
centroid and only *assumes* that a re-seeded cluster receives half of its donor's points (see
``docs/ENVIRONMENT.md``). We therefore drive the iterations ourselves and use faiss only for the
expensive part, the exact nearest-centroid search. The loop is written as pure steps
(:func:`assign`, :func:`accumulate`, :func:`update_centroids`, and
:func:`~deepercluster.cluster.reseed.fill_empty`) so that a distributed version only has to
all-reduce the output of :func:`accumulate` between them, as SwAV's ``cluster_memory`` does.

When no cluster ever empties, :func:`kmeans` reproduces ``faiss.Kmeans`` started from the same
centroids (same assignments, centroids within float32 rounding).

References:
    - [0] DeeperCluster: Caron et al., "Unsupervised Pre-Training of Image Features on
      Non-Curated Data", ICCV 2019, https://arxiv.org/abs/1905.01278
    - [1] Johnson et al., "Billion-scale similarity search with GPUs" (faiss), 2017,
      https://arxiv.org/abs/1702.08734
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import faiss
import numpy as np
import scipy.sparse

from deepercluster.cluster.reseed import fill_empty

__all__ = [
    "KMeansResult",
    "accumulate",
    "assign",
    "check_features",
    "faiss_threads",
    "kmeans",
    "lloyd",
    "squared_distances",
    "update_centroids",
]

# Values per block of the M-step's float64 copy of the features (8 MB).
_BLOCK_VALUES = 2**20
# assign() searches no part of fewer points in a thread of its own (see _query_parts).
_MIN_PART_ROWS = 2048
# kmeans() converts the features to float64 once, not at every M-step, when the copy is at most
# this large (bench/kmeans.py: the per-iteration conversion was a third of the M-step).
_FLOAT64_CACHE_BYTES = 256 * 2**20


@dataclass(frozen=True)
class KMeansResult:
    """Outcome of :func:`kmeans`.

    Attributes:
        centroids: (k, D) float32 centroids.
        assignments: (N,) int64 index of the centroid of each point, from a final assignment
            step against ``centroids``; every cluster has at least one member.
        objective: sum over points of the squared L2 distance to their assigned centroid.
        n_reseeded: empty clusters re-seeded over all iterations, the final step included.
        objectives: per-iteration objective (before that iteration's M-step), for logging;
            same convention as ``faiss.Kmeans.obj``.
    """

    centroids: np.ndarray
    assignments: np.ndarray
    objective: float
    n_reseeded: int
    objectives: tuple[float, ...]

    @property
    def k(self) -> int:
        """Number of clusters."""
        return int(self.centroids.shape[0])


def check_features(x: np.ndarray, *, name: str = "x") -> np.ndarray:
    """Validate a feature matrix and return it C-contiguous.

    Args:
        x: (N, D) float32 features, finite.
        name: how the error messages call ``x``.

    Returns:
        ``x`` itself, or a C-contiguous copy when it was a strided view.

    Raises:
        ValueError: wrong rank or dtype, no rows, or NaN/inf values.
    """
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D), got {x.shape}; reshape it first")
    if x.dtype != np.float32:
        # An implicit cast would silently double memory at the paper's scale.
        raise ValueError(f"{name} must be float32, got {x.dtype}; pass {name}.astype(np.float32)")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {x.shape}); extract features first")
    # faiss returns label -1 for NaN queries, which would corrupt the M-step much later.
    # Checked in blocks: a whole-array mask would be as large as x / 4.
    rows = max(_BLOCK_VALUES // x.shape[1], 1)
    for start in range(0, x.shape[0], rows):
        if not np.isfinite(x[start : start + rows]).all():
            raise ValueError(f"{name} contains NaN or inf; check the feature extraction")
    return np.ascontiguousarray(x)


@contextmanager
def faiss_threads(threads: int | None) -> Iterator[None]:
    """Set faiss' OpenMP thread count for the duration of a ``with`` block, then restore it.

    Several processes on one machine must split its cores explicitly, or each one's OpenMP
    pool grabs all of them and they oversubscribe.

    Args:
        threads: threads to use, or None to leave the current setting alone.
    """
    if threads is None:
        yield
        return
    if threads < 1:
        raise ValueError(f"threads must be >= 1 or None, got {threads}")
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def squared_distances(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Row-wise squared L2 distance between ``x[i]`` and ``centroids[i]``.

    Args:
        x: (n, D) float32 points.
        centroids: (n, D) float32, one centroid per point (already gathered).

    Returns:
        (n,) float32 squared distances.
    """
    diff = x - centroids
    distances: np.ndarray = np.einsum("ij,ij->i", diff, diff)
    return distances


def assign(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """E-step: nearest centroid of every point (exact search with faiss).

    With faiss' OpenMP thread count T above 1 and enough points, the points are searched as T
    equal parts, one single-threaded faiss search per Python thread, instead of one search on
    T threads (faiss parallelises within each block of 4,096 queries; separate searches share
    nothing). Measured on 2 cores, D = 128 (``docs/performance.md``, round 7): 1.00-1.34x
    faster for 6k-100k points and k <= 256, 1.02-1.07x at k = 1,024; unequal parts were
    slower (0.83x). Labels are those of one single-threaded search (tested, ties included), and
    so are distances, but for their last bit on some CPUs: there (an AMD EPYC with faiss-cpu
    1.15's OpenBLAS) a BLAS product's rounding depends on which rows share it, and a part not
    aligned to faiss' 4,096-query blocks moves ~10% of its distances by an ulp, as faiss' own
    search on 2 threads moves ~15% of them against 1 thread.

    Args:
        x: (N, D) float32 points, C-contiguous.
        centroids: (k, D) float32 centroids.

    Returns:
        assignments: (N,) int64 index of the nearest centroid.
        sq_distances: (N,) float32 squared L2 distance to it, clipped at 0.
    """
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    bounds = _query_parts(x.shape[0], x.shape[1], faiss.omp_get_max_threads())
    if len(bounds) == 2:
        distances, labels = faiss.knn(x, centroids, 1)
    else:
        distances = np.empty((x.shape[0], 1), dtype=np.float32)
        labels = np.empty((x.shape[0], 1), dtype=np.int64)

        def search(part: int) -> None:
            rows = slice(bounds[part], bounds[part + 1])
            with faiss_threads(1):
                distances[rows], labels[rows] = faiss.knn(x[rows], centroids, 1)

        with ThreadPoolExecutor(len(bounds) - 2) as pool:
            others = [pool.submit(search, part) for part in range(1, len(bounds) - 1)]
            search(0)
            for future in others:
                future.result()
    # The BLAS path computes |x|^2 + |c|^2 - 2<x, c>, which rounds slightly below 0 for x == c.
    return labels[:, 0].astype(np.int64), np.maximum(distances[:, 0], 0.0)


def _query_parts(n: int, dim: int, threads: int) -> list[int]:
    """Row bounds [0, ..., n] of at most ``threads`` equal parts of the points to search.

    Every part keeps faiss on the path it takes for all the points, its BLAS path (taken when
    queries x D reaches ``distance_compute_blas_threshold``): the exhaustive path below the
    threshold computes the distances another way, exact zeros among them (tested). Parts of
    fewer than 2,048 points would cost more in threads than they save.
    """
    threshold = int(faiss.cvar.distance_compute_blas_threshold)
    min_rows = max(_MIN_PART_ROWS, -(-threshold // dim))
    parts = max(1, min(threads, n // min_rows))
    return [n * i // parts for i in range(parts)] + [n]


def accumulate(x: np.ndarray, assignments: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster sums and counts of the points: the part of the M-step to all-reduce.

    Each block of points is multiplied by its (k, rows) one-hot matrix, built in CSC form
    straight from the assignments (no sort). At 50k x 128, k = 1000 this takes 7 ms, against
    13 ms for one unblocked CSR product, 58 ms for a ``np.bincount`` per dimension and 230 ms
    for ``np.add.at``. Blocks of ~8 MB keep the float64 copy in cache; they grow to k rows when
    k is large, so that the (k, D) output of every block product stays cheaper than its input.

    With faiss' OpenMP thread count T above 1, the block products run T at a time in Python
    threads (scipy's product and numpy's cast release the GIL), and are added to the sums one
    by one in block order, so the sums are bit-identical for any T; a wave holds T (k, D)
    products. Measured on 2 cores (round 7): 400k x 128 float32 points, 59 vs 82 ms at k = 4,
    55 vs 76 ms at k = 16, 97 vs 108 ms at k = 1,024; in the 50k x 128, k = 16 k-means loop
    ~14% less time in this function.

    Args:
        x: (N, D) float32 points (or float64: then used without a copy).
        assignments: (N,) int64 cluster ids in [0, k).
        k: number of clusters.

    Returns:
        sums: (k, D) float64 sum of the members of every cluster.
        counts: (k,) int64 number of members of every cluster.
    """
    n, dim = x.shape
    block_rows = max(_BLOCK_VALUES // dim, k, 1024)

    def block_sums(start: int) -> np.ndarray:
        block = assignments[start : start + block_rows]
        rows = block.shape[0]
        one_hot = scipy.sparse.csc_array(
            (np.ones(rows, dtype=np.float64), block, np.arange(rows + 1)), shape=(k, rows)
        )
        product: np.ndarray = one_hot @ x[start : start + rows].astype(np.float64, copy=False)
        return product

    starts = list(range(0, n, block_rows))
    threads = min(faiss.omp_get_max_threads(), len(starts))
    counts = np.bincount(assignments, minlength=k).astype(np.int64)
    if len(starts) == 1:  # every level-2 run of small problems: no zeros to add the block to
        return block_sums(0), counts
    sums = np.zeros((k, dim), dtype=np.float64)
    if threads <= 1:
        for start in starts:
            sums += block_sums(start)
    else:
        with ThreadPoolExecutor(threads) as pool:
            for first in range(0, len(starts), threads):
                for product in pool.map(block_sums, starts[first : first + threads]):
                    sums += product
    return sums, counts


def update_centroids(sums: np.ndarray, counts: np.ndarray, old_centroids: np.ndarray) -> np.ndarray:
    """M-step: centroid = sum / count; an empty cluster keeps its previous centroid.

    Args:
        sums: (k, D) float64 per-cluster sums (all-reduced when distributed).
        counts: (k,) int64 per-cluster counts (all-reduced when distributed).
        old_centroids: (k, D) centroids of the E-step, kept where ``counts == 0``.

    Returns:
        (k, D) float32 new centroids.
    """
    nonempty = counts > 0
    if nonempty.all():  # the usual case after re-seeding: no masked copies (same values)
        divided: np.ndarray = (sums / counts[:, None]).astype(np.float32)
        return divided
    centroids = np.array(old_centroids, dtype=np.float32, copy=True)
    centroids[nonempty] = sums[nonempty] / counts[nonempty, None]
    return centroids


def initial_centroids(
    x: np.ndarray, k: int, init: np.ndarray | None, rng: np.random.Generator
) -> np.ndarray:
    if init is None:
        # k distinct points (duplicated *values* are possible and handled by re-seeding).
        return x[np.sort(rng.choice(x.shape[0], size=k, replace=False))].copy()
    if init.shape != (k, x.shape[1]):
        raise ValueError(
            f"init has shape {init.shape}, expected (k, D) = {(k, x.shape[1])}; "
            "warm-start only from a clustering with the same k and feature dimension"
        )
    if not np.isfinite(init).all():
        raise ValueError("init contains NaN or inf; pass init=None to start from random points")
    return np.array(init, dtype=np.float32, copy=True)


def kmeans(
    x: np.ndarray,
    k: int,
    *,
    niter: int = 10,
    seed: int = 0,
    init: np.ndarray | None = None,
    threads: int | None = None,
) -> KMeansResult:
    """Lloyd k-means with exactly ``niter`` iterations and no empty cluster at the end.

    Every iteration assigns each point to its nearest centroid (E-step), re-seeds empty
    clusters by splitting big ones (:func:`~deepercluster.cluster.reseed.fill_empty`, as
    DeepCluster and faiss do), then moves each centroid to the mean of its members (M-step). A
    final E-step against the returned centroids gives the assignments; if it empties a cluster,
    that cluster is split again and the two halves' centroids are set to their means.

    Args:
        x: (N, D) float32 features.
        k: number of clusters, 1 <= k <= N.
        niter: number of iterations; always run in full (no early stop, no subsampling).
        seed: seeds the choice of the initial points and of the donors of empty clusters.
        init: optional (k, D) initial centroids, e.g. the previous clustering (warm start).
        threads: faiss OpenMP threads for this call (None: leave the current setting).

    Returns:
        The :class:`KMeansResult`.

    Raises:
        ValueError: bad ``x``, ``k`` out of [1, N], negative ``niter`` or a mis-shaped ``init``.
    """
    return lloyd(check_features(x), k, niter=niter, seed=seed, init=init, threads=threads)


def lloyd(
    x: np.ndarray,
    k: int,
    *,
    niter: int = 10,
    seed: int = 0,
    init: np.ndarray | None = None,
    threads: int | None = None,
) -> KMeansResult:
    """:func:`kmeans` of features that :func:`check_features` has already passed.

    The hierarchy checks all the features once and then clusters subsets of them (rows of a
    finite C-contiguous float32 array are too): checking every subset again scanned the
    features twice more, ~2.5% of a 16-way hierarchy at N = 50k, D = 128.

    Args:
        x: (N, D) C-contiguous, finite float32 features (what :func:`check_features` returns).
        k, niter, seed, init, threads: as for :func:`kmeans`.

    Returns:
        The :class:`KMeansResult`.

    Raises:
        ValueError: ``k`` out of [1, N], negative ``niter`` or a mis-shaped ``init``.
    """
    n = x.shape[0]
    if k < 1:
        raise ValueError(f"cluster.k ({k}) must be at least 1")
    if k > n:
        raise ValueError(
            f"cluster.k ({k}) is larger than the number of images ({n}); lower cluster.k"
        )
    if niter < 0:
        raise ValueError(f"cluster.niter ({niter}) must be >= 0")
    rng = np.random.default_rng(seed)
    centroids = initial_centroids(x, k, init, rng)
    # The M-step sums in float64; the same values, converted once when that is affordable.
    x_sum = x.astype(np.float64) if 2 * x.nbytes <= _FLOAT64_CACHE_BYTES else x
    n_reseeded = 0
    objectives: list[float] = []
    with faiss_threads(threads):
        for _ in range(niter):
            assignments, sq_distances = assign(x, centroids)
            objectives.append(float(sq_distances.sum(dtype=np.float64)))
            assignments, centroids, pairs = fill_empty(x, assignments, centroids, rng)
            n_reseeded += pairs.shape[0]
            sums, counts = accumulate(x_sum, assignments, k)
            centroids = update_centroids(sums, counts, centroids)
        assignments, sq_distances = assign(x, centroids)
        assignments, centroids, pairs = fill_empty(x, assignments, centroids, rng)
    if pairs.shape[0] > 0:
        n_reseeded += pairs.shape[0]
        # Give the split clusters their members' means so that the returned centroids are the
        # best ones for the returned assignments, then re-measure the points that moved.
        touched = np.unique(pairs)
        sums, counts = accumulate(x_sum, assignments, k)
        centroids[touched] = sums[touched] / counts[touched, None]
        moved = np.flatnonzero(np.isin(assignments, touched))
        sq_distances[moved] = squared_distances(x[moved], centroids[assignments[moved]])
    return KMeansResult(
        centroids=centroids,
        assignments=assignments,
        objective=float(sq_distances.sum(dtype=np.float64)),
        n_reseeded=n_reseeded,
        objectives=tuple(objectives),
    )
