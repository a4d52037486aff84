"""Bounded-memory clustering: the memory budget, PCA from stored features, whitening to disk.

With ``cluster.feature_store = "disk"`` the raw features never come back into memory as a
whole: the PCA moments are summed block by block (all-reduced across ranks), the whitened
features are written to a second store, and k-means streams that store
(:mod:`deepercluster.cluster.chunked`). ``cluster.memory_limit`` sets the block size, and
makes the in-memory store refuse, before extracting anything, a round that cannot fit.
"""

from __future__ import annotations

import numpy as np

from deepercluster import distributed
from deepercluster.cluster import PCAWhitening, pca_from_moments
from deepercluster.cluster.chunked import moments_chunked
from deepercluster.cluster.level2_runs import level2_workers
from deepercluster.cluster.store import FeatureStore
from deepercluster.config import ClusterConfig

# Per-image bytes that stay in memory whatever the store: assignments, distances, labels,
# validity flags and the per-level scratch of the hierarchy (measured upper bound).
PER_IMAGE_BYTES = 64
MAX_BLOCK_ROWS = 65536


def memory_need(c: ClusterConfig, *, rows: int, dim: int) -> int:
    """Bytes one process needs for a clustering round over ``rows`` images of dimension D.

    Memory store: the (rows, D) float32 features, their readable-row copy, the (rows, d)
    whitened ones, and as much again for the level-2 k-means running side by side (each holds
    its rows in float32 and float64; ``cluster.level2_runs.level2_workers`` keeps them within
    that). Disk store: per-image bookkeeping, a few blocks of rows and the D x D float64
    moments and eigen-decomposition of the PCA (which no store can avoid).
    """
    d = min(c.pca_dim, dim)
    if c.feature_store == "memory":
        return rows * (2 * dim * 4 + 2 * d * 4 + PER_IMAGE_BYTES)
    blocks = 3 * block_rows(c, dim) * dim * 4 + 2 * extraction_chunk(c, dim) * dim * 4
    return rows * (PER_IMAGE_BYTES + 4 * c.super_clusters) + blocks + 6 * dim * dim * 8


def block_rows(c: ClusterConfig, dim: int) -> int:
    """Rows streamed at once: 1/32 of the budget per block (a few are alive at once, and
    most of the budget is left to the per-image arrays), at most 65,536 rows."""
    limit = c.memory_limit_bytes
    if limit is None:
        return MAX_BLOCK_ROWS
    return int(np.clip(limit // 32 // (dim * 4), 256, MAX_BLOCK_ROWS))


def level2_runs_at_once(c: ClusterConfig, threads: int) -> int:
    """Level-2 k-means that one process runs side by side over the disk store.

    Without a memory limit, as many as in memory
    (:func:`~deepercluster.cluster.level2_runs.level2_workers`); each run holds at most a
    block of its rows, in float32 and float64. On 2 cores, N = 200k, D = 128, k = 2048: the
    m = 16 hierarchy took 1.43-1.51 s instead of 1.69-1.80 s; at m = 4 two runs at once did
    not pay (2.45-2.88 s vs 2.55-2.70 s), and ``level2_workers`` keeps them one at a time.

    Under ``cluster.memory_limit``, one at a time. Two runs in threads took the out-of-core
    round's peak from +45-52 to +71-72 MiB for a 95 MiB limit (``scripts/out_of_core.py``,
    520k images, m = 4; back to +52 MiB with ``MALLOC_ARENA_MAX=1``: glibc's per-thread
    heaps, which no block size bounds), for k-means in 2.9-3.3 s instead of 3.9-4.6 s.

    Args:
        c: the cluster settings.
        threads: the clustering's OpenMP threads.
    """
    if c.memory_limit_bytes is not None:
        return 1
    return level2_workers(c.super_clusters, threads)


def extraction_chunk(c: ClusterConfig, dim: int) -> int:
    """Images per extraction chunk: ``cluster.chunk_images``, fewer if the budget needs it
    (a chunk's features are held twice while it is written)."""
    limit = c.memory_limit_bytes
    if limit is None:
        return c.chunk_images
    return int(min(c.chunk_images, max(64, limit // 32 // (dim * 4))))


def check_memory(c: ClusterConfig, *, rows: int, dim: int) -> None:
    """Refuse a clustering round that will not fit in ``cluster.memory_limit``.

    Raises:
        ValueError: naming the need, the limit and the fix (the disk store, or more RAM).
    """
    limit = c.memory_limit_bytes
    need = memory_need(c, rows=rows, dim=dim)
    if limit is None or need <= limit:
        return
    fix = (
        "set cluster.feature_store=disk (--feature-store disk) to stream the features from disk"
        if c.feature_store == "memory"
        else "raise the limit or use more processes (each holds a shard)"
    )
    raise ValueError(
        f"clustering {rows:,} images of dimension {dim} needs about {need / 1e9:.2f} GB per "
        f"process with cluster.feature_store={c.feature_store}, over cluster.memory_limit "
        f"({c.memory_limit}); {fix}"
    )


def fit_pca_store(
    store: FeatureStore,
    valid: np.ndarray,
    *,
    dim: int,
    power: float,
    sample: int | None,
    seed: int,
    block: int,
) -> PCAWhitening:
    """The PCA of ``fit_pca_distributed`` (or ``fit_pca`` in one process), rows streamed.

    The sample, if any, is the same set of rows over the concatenated readable features of
    all ranks as the in-memory fits draw; the moments are summed over blocks, then
    all-reduced, and every rank solves the same eigenproblem.

    Args:
        store: this rank's (n_r, D) features.
        valid: (n_r,) bool, the readable rows (the only ones fitted on).
        dim, power: output dimension and whitening power.
        sample: fit on this many rows over all ranks; None = all.
        seed: seeds the sample.
        block: rows per block.
    """
    rows = np.flatnonzero(valid)
    counts = distributed.all_gather_cat_np(np.array([len(rows)], dtype=np.int64))
    offset, total_n = int(counts[: distributed.rank()].sum()), int(counts.sum())
    if sample is not None and sample < total_n:
        if sample < 2:
            raise ValueError(f"cluster.pca_sample ({sample}) must be >= 2")
        picks = np.sort(np.random.default_rng(seed).choice(total_n, size=sample, replace=False))
        mine = picks[(picks >= offset) & (picks < offset + len(rows))] - offset
        rows = rows[mine]
    total, outer = moments_chunked(store, rows, block)
    packed = distributed.all_reduce_sum_np(
        np.concatenate([[float(len(rows))], total, outer.ravel()])
    )
    n, d = round(float(packed[0])), store.dim
    return pca_from_moments(
        n, packed[1 : d + 1], packed[d + 1 :].reshape(d, d), dim=dim, power=power
    )


def whiten_to_store(
    store: FeatureStore, valid: np.ndarray, pca: PCAWhitening, reduced: FeatureStore
) -> None:
    """Write ``pca.apply`` of the readable rows of ``store`` into ``reduced``, chunk by chunk.

    Resumes after the last finished chunk of ``reduced`` (it is a stage checkpoint too).

    Args:
        store: (n_r, D) raw features.
        valid: (n_r,) bool; ``reduced`` holds ``valid.sum()`` rows, in order.
        pca: the fitted whitening.
        reduced: (valid.sum(), d) float32 output store.
    """
    rows = np.flatnonzero(valid)
    for chunk in range(reduced.chunks_done, reduced.n_chunks):
        start, stop = reduced.chunk_range(chunk)
        wanted = rows[start:stop]
        first = int(wanted[0])
        block = store.read(first, int(wanted[-1]) + 1)[wanted - first]
        reduced.write_chunk(chunk, pca.apply(block))
