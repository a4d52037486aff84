"""Bounded-memory clustering: the memory budget, PCA from stored features, whitening to disk.

With ``cluster.feature_store = "disk"`` the raw features never come back into memory as a
whole: the PCA moments are summed block by block (all-reduced across ranks), the whitened
features are written to a second store, and k-means streams that store
(:class:`deepercluster.cluster.Blocks` over a store). ``cluster.memory_limit`` sets the block
size, and makes the in-memory store refuse, before extracting anything, a round that cannot fit.
"""

from __future__ import annotations

import numpy as np
import torch

from deepercluster.cluster import PCAWhitening
from deepercluster.cluster.store import FeatureStore
from deepercluster.config import ClusterConfig

# Per-image bytes that stay in memory whatever the store: assignments, distances, labels,
# validity flags and the per-level scratch of the hierarchy (measured upper bound).
PER_IMAGE_BYTES = 64
MAX_BLOCK_ROWS = 65536


def memory_need(c: ClusterConfig, *, rows: int, dim: int) -> int:
    """Bytes one process needs for a clustering round over ``rows`` images of dimension D.

    Memory store: the (rows, D) float32 features, their readable-row copy, the (rows, d)
    whitened ones, and as much again for the copy of a super-cluster's rows that its level-2
    k-means gathers (plus bounded float64 blocks). Disk store: per-image bookkeeping, a few
    blocks of rows and the D x D float64 moments and eigen-decomposition of the PCA (which
    no store can avoid).
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
        # The same whitening code as the in-memory store's, so both give the same rows.
        reduced.write_chunk(chunk, pca.apply_tensor(torch.from_numpy(block)).numpy())


def clustering_device(
    c: ClusterConfig, device: torch.device, *, rows: int, dim: int
) -> torch.device:
    """Where the in-memory clustering runs: the training device when the features fit there.

    On a GPU the (rows, D) features, their (rows, d) whitened copy and a super-cluster's
    gathered rows must fit in half of its free memory (the rest is the network's and the
    E-step's tiles); otherwise, and with the disk store, the CPU.
    """
    if c.feature_store != "memory" or device.type != "cuda":
        return torch.device("cpu")
    need = rows * (2 * dim + 2 * min(c.pca_dim, dim)) * 4
    free, _ = torch.cuda.mem_get_info(device)
    return device if need <= free // 2 else torch.device("cpu")
