"""Two-level clustering: recovery, balancing, m == 1 equivalence, warm start, checkpoints."""

from __future__ import annotations

from collections.abc import Callable

import faiss
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from deepercluster.cluster import (
    HierarchicalResult,
    balance_super_clusters,
    cluster_size_stats,
    hierarchical_kmeans,
    kmeans,
    subcluster_seed,
)

Blobs = Callable[..., tuple[np.ndarray, np.ndarray]]


def _two_level_blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """4 groups far apart, each made of 5 tight blobs of 12 points: (240, 8)."""
    rng = np.random.default_rng(seed)
    groups = rng.standard_normal((4, 8)) * 100
    blobs = groups.repeat(5, axis=0) + rng.standard_normal((20, 8)) * 5
    blob_ids = np.repeat(np.arange(20), 12)
    x = blobs[blob_ids] + rng.standard_normal((blob_ids.size, 8)) * 0.05
    return x.astype(np.float32), blob_ids // 5, blob_ids


def _init_from_truth(x: np.ndarray, blob_ids: np.ndarray, m: int) -> HierarchicalResult:
    """A warm start with one point per blob: the recovery tests then do not depend on luck."""
    k = int(blob_ids.max()) + 1
    first = np.array([np.flatnonzero(blob_ids == b)[0] for b in range(k)])
    sub_centroids = x[first].reshape(m, k // m, -1)
    return HierarchicalResult(
        super_assignments=blob_ids // (k // m),
        sub_assignments=blob_ids % (k // m),
        super_centroids=sub_centroids.mean(axis=1),
        sub_centroids=sub_centroids,
        objective=0.0,
        super_objective=0.0,
        n_reseeded=0,
        n_moved=0,
    )


def _check_valid(result: HierarchicalResult, n: int, k: int, m: int) -> None:
    assert result.labels.shape == (n,)
    assert result.labels.min() >= 0 and result.labels.max() < k
    assert result.super_assignments.max() < m and result.sub_assignments.max() < k // m
    assert result.sub_centroids.shape[:2] == (m, k // m)
    assert result.cluster_sizes().min() >= 1
    assert cluster_size_stats(result.labels, k)["n_empty"] == 0.0


def test_recovers_groups_and_blobs() -> None:
    x, groups, blobs = _two_level_blobs()
    result = hierarchical_kmeans(x, k=20, m=4, niter=5, init=_init_from_truth(x, blobs, 4))
    _check_valid(result, x.shape[0], 20, 4)
    assert adjusted_rand_score(groups, result.super_assignments) == 1.0
    assert adjusted_rand_score(blobs, result.labels) == 1.0
    assert result.n_moved == 0


def test_random_start_keeps_every_cluster() -> None:
    x, _, _ = _two_level_blobs(seed=1)
    result = hierarchical_kmeans(x, k=20, m=4, niter=10, seed=0)
    _check_valid(result, x.shape[0], 20, 4)
    diff = x - result.sub_centroids[result.super_assignments, result.sub_assignments]
    assert result.objective == pytest.approx(float((diff.astype(np.float64) ** 2).sum()), rel=1e-4)


def test_warm_start_from_a_converged_result_changes_nothing() -> None:
    x, _, _ = _two_level_blobs(seed=2)
    first = hierarchical_kmeans(x, k=20, m=4, niter=10, seed=3)
    again = hierarchical_kmeans(x, k=20, m=4, niter=2, seed=99, init=first)
    np.testing.assert_array_equal(again.super_assignments, first.super_assignments)
    np.testing.assert_array_equal(again.sub_assignments, first.sub_assignments)
    np.testing.assert_allclose(again.sub_centroids, first.sub_centroids, atol=1e-5)
    assert again.n_reseeded == 0


def test_tiny_super_cluster_gets_topped_up() -> None:
    rng = np.random.default_rng(0)
    far = np.full((3, 4), 1000.0) + rng.standard_normal((3, 4))
    x = np.concatenate([rng.standard_normal((100, 4)), far]).astype(np.float32)
    result = hierarchical_kmeans(x, k=10, m=2, niter=10, seed=0)
    _check_valid(result, 103, 10, 2)
    assert result.n_moved == 2
    assert np.bincount(result.super_assignments).min() == 5


def test_balance_respects_the_donors_minimum() -> None:
    x = np.array([[0], [1], [2], [3], [4], [5], [6], [7], [8], [9]], dtype=np.float32)
    assignments = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 2])
    centroids = np.array([[2.0], [6.5], [100.0]], dtype=np.float32)
    balanced, moved = balance_super_clusters(x, assignments, centroids, 3)
    # Cluster 2 needs 2 more; cluster 1 (4 members) can give only 1, its nearest to 100: 8.
    assert moved == 2
    np.testing.assert_array_equal(balanced, [0, 0, 0, 0, 2, 1, 1, 1, 2, 2])


def test_single_super_cluster_is_flat_kmeans(make_blobs: Blobs) -> None:
    x, _ = make_blobs(6, 20, 5, spread=1.0, scale=2.0)
    result = hierarchical_kmeans(x, k=6, m=1, niter=4, seed=5)
    flat = kmeans(x, 6, niter=4, seed=subcluster_seed(5, 0))
    np.testing.assert_array_equal(result.super_assignments, 0)
    np.testing.assert_array_equal(result.labels, flat.assignments)
    np.testing.assert_array_equal(result.sub_centroids[0], flat.centroids)
    np.testing.assert_allclose(result.super_centroids[0], x.mean(axis=0), atol=1e-4)
    assert result.objective == flat.objective


def test_single_super_cluster_matches_faiss(make_blobs: Blobs) -> None:
    x, ids = make_blobs(6, 20, 5, spread=1.0, scale=2.0)
    init = _init_from_truth(x, ids, 1)
    result = hierarchical_kmeans(x, k=6, m=1, niter=4, init=init)
    km = faiss.Kmeans(5, 6, niter=4, max_points_per_centroid=10**9, min_points_per_centroid=1)
    km.cp.early_stop_threshold = -1.0
    km.train(x, init_centroids=init.sub_centroids[0])
    np.testing.assert_allclose(result.sub_centroids[0], km.centroids, atol=1e-4)
    np.testing.assert_array_equal(result.labels, km.index.search(x, 1)[1][:, 0])


def test_k_equal_to_m_and_k_equal_to_n() -> None:
    x = np.random.default_rng(0).standard_normal((12, 3)).astype(np.float32)
    _check_valid(hierarchical_kmeans(x, k=3, m=3, niter=2), 12, 3, 3)
    _check_valid(hierarchical_kmeans(x, k=12, m=4, niter=2), 12, 12, 4)


def test_dict_round_trip() -> None:
    x, _, _ = _two_level_blobs()
    result = hierarchical_kmeans(x, k=8, m=2, niter=2)
    state = result.to_dict()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    back = HierarchicalResult.from_dict(state)
    for key, value in state.items():
        np.testing.assert_array_equal(back.to_dict()[key], value)
    with pytest.raises(ValueError, match="keys"):
        HierarchicalResult.from_dict({k: v for k, v in state.items() if k != "n_moved"})


@pytest.mark.parametrize(
    ("k", "m", "message"),
    [
        (10, 3, r"cluster.k \(10\) must be divisible by cluster.super_clusters \(3\)"),
        (40, 4, r"cluster.k \(40\) is larger than the number of images \(30\)"),
        (4, 0, "at least 1"),
    ],
)
def test_bad_parameters_raise(k: int, m: int, message: str) -> None:
    x = np.zeros((30, 2), dtype=np.float32)
    with pytest.raises(ValueError, match=message):
        hierarchical_kmeans(x, k=k, m=m)


def test_mismatched_warm_start_raises() -> None:
    x, _, _ = _two_level_blobs()
    previous = hierarchical_kmeans(x, k=8, m=2, niter=1)
    with pytest.raises(ValueError, match="init=None"):
        hierarchical_kmeans(x, k=12, m=2, init=previous)


def test_subcluster_seeds_differ() -> None:
    seeds = {subcluster_seed(0, s) for s in range(100)} | {subcluster_seed(1, 0)}
    assert len(seeds) == 101


def test_cluster_size_stats() -> None:
    stats = cluster_size_stats(np.array([0, 0, 0, 2]), 4)
    assert stats == {"min": 0.0, "median": 0.5, "max": 3.0, "n_empty": 2.0}


def test_progress_callback_counts_every_kmeans_run() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8)).astype(np.float32)
    calls: list[tuple[int, int]] = []
    hierarchical_kmeans(x, k=12, m=3, niter=2, on_level_done=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
