"""Level 1 fitted on a random sample of the images, then every image assigned.

Level 1 splits all N images into only m super-clusters (4 in the paper, 16 at most in
practice). Each of its Lloyd iterations reads every feature to compute an (N, m) product:
memory-bound work, a large share of a many-way hierarchy (``bench/level1_sample.py``). A
handful of centroids is well estimated from far fewer points: ``faiss.Kmeans`` fits on at
most 256 points per centroid by default. With
``cluster.level1_sample = s`` the level-1 k-means runs on s images drawn without replacement,
and one more pass assigns every image to its nearest super-centroid; the balancing and level 2
see all images, as before. The reference code fits level 1 on every image, and so does the
default (``s = 0``).

The sample is drawn over the whole collection from the clustering seed, so the in-memory,
streamed and distributed clusterings pick the same rows and give the same result.
"""

from __future__ import annotations

import numpy as np

__all__ = ["sample_rows"]

# Spawn key of the sample's random stream: the level-2 runs use keys 0..m-1 (subcluster_seed),
# which stay below 2**32, so this one is never theirs.
_SAMPLE_KEY = 2**32


def sample_rows(n: int, sample: int, m: int, seed: int) -> np.ndarray | None:
    """The level-1 sample: ascending indices of ``sample`` of the ``n`` rows of the collection.

    Args:
        n: rows in the whole collection (over all ranks).
        sample: ``cluster.level1_sample``; 0 means every row.
        m: number of super-clusters, the level-1 k.
        seed: the clustering seed (the sample's stream is derived from it, apart from the
            level-1 and level-2 k-means streams).

    Returns:
        (sample,) int64 row indices, or None when the sample would hold every row (0 or
        ``sample >= n``): then level 1 runs on all rows, as without sampling.

    Raises:
        ValueError: a negative sample, or one smaller than m (k-means needs m points).
    """
    if sample < 0:
        raise ValueError(f"cluster.level1_sample ({sample}) must be >= 0 (0 = every image)")
    if sample == 0 or sample >= n:
        return None
    if sample < m:
        raise ValueError(
            f"cluster.level1_sample ({sample}) is smaller than cluster.super_clusters ({m}); "
            f"use at least {m} images (faiss' rule is 256 per super-cluster: {256 * m}), or 0"
        )
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_SAMPLE_KEY,)))
    return np.sort(rng.choice(n, size=sample, replace=False)).astype(np.int64)
