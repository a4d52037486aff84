"""Level 1 fitted on a random sample of the images, then every image assigned.

Level 1 splits all N images into only m super-clusters (4 in the paper, 16 at most in
practice). Each of its Lloyd iterations reads every feature twice (E-step and M-step) to
compute an (N, m) product: memory-bound work that, in a 16-way hierarchy of 50k x 128
features, takes ~40% of the whole clustering (``bench/kmeans.py``, ``docs/performance.md``
rounds 9 and 10). A handful of centroids is well estimated from far fewer
points: ``faiss.Kmeans`` fits on at most 256 points per centroid by default. With
``cluster.level1_sample = s`` the level-1 k-means runs on s images drawn without replacement,
and one more pass assigns every image to its nearest super-centroid; the balancing and level 2
see all images, as before. The reference code fits level 1 on every image, and so does the
default (``s = 0``).

The sample is drawn over the whole collection from the clustering seed, so the in-memory,
streamed and distributed clusterings pick the same rows and give the same result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from deepercluster.cluster.kmeans import KMeansResult, assign

__all__ = ["Level1Sample", "draw_level1_sample", "nearest", "sample_rows"]

# Spawn key of the sample's random stream: the level-2 runs use keys 0..m-1 (subcluster_seed),
# which stay below 2**32, so this one is never theirs.
_SAMPLE_KEY = 2**32


@dataclass(frozen=True)
class Level1Sample:
    """The rows level 1 is fitted on, and how to assign every row afterwards.

    Attributes:
        rows: (s_r,) ascending indices of the sampled rows among the rows at hand (this
            rank's shard when distributed; possibly none of them).
        assign_all: ``centroids (m, D) -> (labels (n,), objective)``: the nearest centroid of
            every row at hand and the sum of squared distances over the whole collection.
    """

    rows: np.ndarray
    assign_all: Callable[[np.ndarray], tuple[np.ndarray, float]]

    def extend(self, fit: KMeansResult) -> KMeansResult:
        """The level-1 result for every row, from the k-means ``fit`` of the sample.

        The centroids stay those of the sample (as with ``faiss.Kmeans``' subsampling), so a
        super-cluster may end up with few or no images; the balancing that follows level 1
        tops every super-cluster up to k/m images. ``objective`` becomes the whole
        collection's; ``objectives`` (per iteration, for logging) stay the sample's.
        """
        labels, objective = self.assign_all(fit.centroids)
        return replace(fit, assignments=labels, objective=objective)


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


def draw_level1_sample(
    n: int,
    sample: int,
    m: int,
    seed: int,
    assign_all: Callable[[np.ndarray], tuple[np.ndarray, float]],
    local: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Level1Sample | None:
    """The level-1 sample of the rows at hand: all ``n`` rows, or a shard of them.

    Args:
        n: rows in the whole collection (over all ranks).
        sample, m, seed: as :func:`sample_rows`.
        assign_all: see :class:`Level1Sample`.
        local: maps the sorted global sample rows to the shard's local ones (None: every
            row is at hand).

    Returns:
        The sampled rows among those at hand (local indices), or None when level 1 runs on
        every row.
    """
    rows = sample_rows(n, sample, m, seed)
    if rows is None:
        return None
    return Level1Sample(rows if local is None else local(rows), assign_all)


def nearest(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, float]:
    """Every row's nearest centroid and the objective, for features held in memory.

    Args:
        x: (N, D) float32 features, C-contiguous and finite.
        centroids: (m, D) float32 centroids.

    Returns:
        (N,) int64 labels and the float sum of squared distances.
    """
    labels, sq_distances = assign(x, centroids)
    return labels, float(sq_distances.sum(dtype=np.float64))
