"""Level 1 fitted on a sample of the images (``cluster.level1_sample``), then all assigned."""

from __future__ import annotations

import numpy as np
import pytest

from deepercluster.cluster import assign, hierarchical_kmeans, kmeans
from deepercluster.cluster.level1_sample import sample_rows
from deepercluster.config import ClusterConfig


def _data(n: int = 2000, dim: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(24, dim)) * 3
    return (centers[rng.integers(0, 24, n)] + rng.normal(size=(n, dim))).astype(np.float32)


def test_level1_is_the_kmeans_of_the_sample_and_every_image_gets_its_nearest() -> None:
    x = _data()
    result = hierarchical_kmeans(x, k=24, m=4, niter=6, seed=5, level1_sample=300)
    rows = sample_rows(len(x), 300, 4, 5)
    assert rows is not None and rows.shape == (300,) and np.all(np.diff(rows) > 0)
    fit = kmeans(x[rows], 4, niter=6, seed=5)
    np.testing.assert_array_equal(result.super_centroids, fit.centroids)
    labels, distances = assign(x, fit.centroids)
    assert result.n_moved == 0  # no balancing: level 1's labels are the nearest centroids
    np.testing.assert_array_equal(result.super_assignments, labels)
    assert result.super_objective == pytest.approx(float(distances.sum(dtype=np.float64)))
    # Every image, sampled or not, reached level 2; no cluster is empty.
    assert np.bincount(result.labels, minlength=24).min() >= 1


def test_a_sample_of_every_image_is_no_sample() -> None:
    x = _data(n=500)
    full = hierarchical_kmeans(x, k=12, m=3, niter=4, seed=1)
    for sample in (0, 500, 10_000):
        same = hierarchical_kmeans(x, k=12, m=3, niter=4, seed=1, level1_sample=sample)
        np.testing.assert_array_equal(same.labels, full.labels)
        np.testing.assert_array_equal(same.super_centroids, full.super_centroids)


def test_the_sample_depends_on_the_seed_and_not_on_the_level2_streams() -> None:
    a, b = sample_rows(1000, 100, 4, 0), sample_rows(1000, 100, 4, 1)
    assert a is not None and b is not None and not np.array_equal(a, b)
    again = sample_rows(1000, 100, 4, 0)
    assert again is not None and np.array_equal(a, again)
    # The level-1 fit draws its initial rows from default_rng(seed); the sample must not be
    # those same draws.
    first = np.sort(np.random.default_rng(0).choice(1000, size=100, replace=False))
    assert not np.array_equal(a, first)


def test_a_sample_with_fewer_images_than_super_clusters_is_refused() -> None:
    x = _data(n=200)
    with pytest.raises(ValueError, match=r"level1_sample \(3\) is smaller than .*super_clusters"):
        hierarchical_kmeans(x, k=8, m=4, level1_sample=3)
    with pytest.raises(ValueError, match=r"level1_sample \(-1\) must be >= 0"):
        hierarchical_kmeans(x, k=8, m=4, level1_sample=-1)
    with pytest.raises(ValueError, match=r"at least cluster.super_clusters \(4\).*1024"):
        ClusterConfig(k=8, super_clusters=4, level1_sample=2)
    assert ClusterConfig(k=8, super_clusters=4, level1_sample=4).level1_sample == 4


def test_one_super_cluster_ignores_the_sample() -> None:
    x = _data(n=300)
    a = hierarchical_kmeans(x, k=6, m=1, niter=3, seed=2)
    b = hierarchical_kmeans(x, k=6, m=1, niter=3, seed=2, level1_sample=50)
    np.testing.assert_array_equal(a.labels, b.labels)
