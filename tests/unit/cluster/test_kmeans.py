"""k-means: steps, faiss equivalence, empty clusters, k-means++, edge cases."""

from __future__ import annotations

from collections.abc import Callable

import faiss
import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from deepercluster.cluster import Blocks, KMeansResult, assign, kmeans
from deepercluster.cluster.kmeans import block_sums, cluster_sums
from deepercluster.config import ClusterConfig

Blobs = Callable[..., tuple[np.ndarray, np.ndarray]]


def _faiss_kmeans(x: np.ndarray, init: np.ndarray, niter: int) -> faiss.Kmeans:
    km = faiss.Kmeans(
        x.shape[1],
        init.shape[0],
        niter=niter,
        max_points_per_centroid=10**9,
        min_points_per_centroid=1,
        seed=1,
    )
    if hasattr(km.cp, "early_stop_threshold"):
        km.cp.early_stop_threshold = -1.0
    km.train(x, init_centroids=init)
    return km


def _check_valid(result: KMeansResult, n: int, k: int) -> None:
    assert result.assignments.shape == (n,)
    assert result.assignments.dtype == np.int64
    assert result.centroids.shape[0] == k
    assert result.centroids.dtype == np.float32
    assert np.bincount(result.assignments, minlength=k).min() >= 1


def _objective(x: np.ndarray, result: KMeansResult) -> float:
    diff = x.astype(np.float64) - result.centroids[result.assignments]
    return float((diff**2).sum())


def test_steps_on_a_hand_example() -> None:
    x = np.array([[0, 0], [0, 1], [10, 0], [10, 2]], dtype=np.float32)
    centroids = np.array([[0, 0], [10, 0], [50, 50]], dtype=np.float32)
    labels, distances = assign(x, centroids)
    np.testing.assert_array_equal(labels, [0, 0, 1, 1])
    np.testing.assert_allclose(distances, [0, 1, 0, 4], atol=1e-5)
    sums = block_sums(torch.from_numpy(x), torch.from_numpy(labels), 3)
    assert sums.dtype == torch.float64
    np.testing.assert_allclose(sums.numpy(), [[0, 1], [20, 2], [0, 0]])
    # One k-means iteration from there: the empty third cluster is re-seeded, the others
    # move to their float32 means.
    result = kmeans(x, 3, niter=1, init=centroids)
    assert result.n_reseeded == 1
    assert np.bincount(result.assignments, minlength=3).min() == 1


def test_sums_do_not_depend_on_the_blocks() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5_000, 16)).astype(np.float32)
    labels = torch.from_numpy(rng.integers(0, 7, x.shape[0]))
    reference = np.zeros((7, 16))
    np.add.at(reference, labels.numpy(), x.astype(np.float64))
    for rows in (5_000, 1_000, 333):
        sums = cluster_sums(Blocks(torch.from_numpy(x), block_rows=rows), labels, 7)
        np.testing.assert_allclose(sums.numpy(), reference, rtol=1e-12, atol=1e-12)
    # A rank without rows contributes zeros.
    empty = cluster_sums(Blocks(torch.zeros((0, 16))), labels[:0], 7)
    assert empty.shape == (7, 16) and not empty.any()


def test_accepts_a_tensor_and_a_numpy_array_alike(make_blobs: Blobs) -> None:
    x, _ = make_blobs(5, 30, 4, spread=2.0)
    a = kmeans(x, 7, niter=3, seed=2)
    b = kmeans(torch.from_numpy(x), 7, niter=3, seed=2)
    np.testing.assert_array_equal(a.assignments, b.assignments)
    np.testing.assert_array_equal(a.centroids, b.centroids)


def test_matches_faiss_when_nothing_empties(make_blobs: Blobs) -> None:
    x, _ = make_blobs(8, 50, 16, spread=1.0, scale=3.0)
    init = x[np.random.default_rng(1).choice(x.shape[0], 8, replace=False)]
    ours = kmeans(x, 8, niter=7, init=init)
    ref = _faiss_kmeans(x, init, niter=7)
    assert ours.n_reseeded == 0
    np.testing.assert_allclose(ours.centroids, ref.centroids, atol=1e-4)
    np.testing.assert_array_equal(ours.assignments, ref.index.search(x, 1)[1][:, 0])
    np.testing.assert_allclose(ours.objectives, ref.obj, rtol=1e-5)


def test_recovers_separated_blobs(make_blobs: Blobs) -> None:
    x, ids = make_blobs(6, 40, 8)
    # Start from one point per blob: from a random start Lloyd may legitimately merge blobs.
    init = x[np.arange(6) * 40 + 3]
    result = kmeans(x, 6, niter=5, init=init)
    _check_valid(result, x.shape[0], 6)
    assert adjusted_rand_score(ids, result.assignments) == 1.0
    assert result.objective == pytest.approx(_objective(x, result), rel=1e-4)
    assert len(result.objectives) == 5


def test_deterministic_given_seed(make_blobs: Blobs) -> None:
    x, _ = make_blobs(5, 30, 4, spread=2.0)
    a, b = kmeans(x, 12, niter=4, seed=3), kmeans(x, 12, niter=4, seed=3)
    np.testing.assert_array_equal(a.assignments, b.assignments)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    c = kmeans(x, 12, niter=4, seed=4)
    assert not np.array_equal(a.centroids, c.centroids)


def test_identical_initial_centroids_force_reseeding(make_blobs: Blobs) -> None:
    x, _ = make_blobs(4, 25, 6)
    init = np.repeat(x[:1], 4, axis=0)
    result = kmeans(x, 4, niter=6, init=init)
    _check_valid(result, x.shape[0], 4)
    assert result.n_reseeded >= 3
    assert result.objective == pytest.approx(_objective(x, result), rel=1e-4)


def test_far_away_centroids_are_reseeded(make_blobs: Blobs) -> None:
    x, _ = make_blobs(3, 20, 5)
    init = np.concatenate([x[[0, 20, 40]], np.full((2, 5), 1e4, dtype=np.float32)])
    result = kmeans(x, 5, niter=3, init=init)
    _check_valid(result, x.shape[0], 5)
    assert result.n_reseeded >= 2


@pytest.mark.parametrize("n", [1, 2, 7, 40])
def test_k_equal_to_n_gives_singletons(n: int) -> None:
    x = np.random.default_rng(n).standard_normal((n, 3)).astype(np.float32)
    result = kmeans(x, n, niter=3)
    _check_valid(result, n, n)
    assert result.objective == pytest.approx(0.0, abs=1e-6)


def test_duplicate_points_never_leave_a_cluster_empty() -> None:
    x = np.repeat(np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32), 6, axis=0)
    result = kmeans(x, 9, niter=4)
    _check_valid(result, 18, 9)
    assert result.n_reseeded > 0
    assert result.objective == pytest.approx(0.0, abs=1e-5)


def test_all_points_identical() -> None:
    x = np.ones((10, 2), dtype=np.float32)
    result = kmeans(x, 4, niter=2)
    _check_valid(result, 10, 4)


def test_final_split_when_the_last_step_empties_a_cluster(make_blobs: Blobs) -> None:
    # niter=0: the final E-step against two identical centroids empties one.
    x, _ = make_blobs(2, 10, 3)
    result = kmeans(x, 2, niter=0, init=np.repeat(x[:1], 2, axis=0))
    _check_valid(result, 20, 2)
    assert result.n_reseeded == 1
    assert result.objectives == ()
    assert result.objective == pytest.approx(_objective(x, result), rel=1e-4)


def test_single_cluster_is_the_mean(make_blobs: Blobs) -> None:
    x, _ = make_blobs(3, 10, 4)
    result = kmeans(x, 1, niter=2)
    np.testing.assert_array_equal(result.assignments, np.zeros(30))
    np.testing.assert_allclose(result.centroids[0], x.mean(axis=0), atol=1e-4)


@pytest.mark.parametrize(
    ("k", "message"),
    [(0, "at least 1"), (31, r"cluster.k \(31\) is larger than the number of images \(30\)")],
)
def test_rejects_bad_k(k: int, message: str) -> None:
    x = np.zeros((30, 2), dtype=np.float32)
    with pytest.raises(ValueError, match=message):
        kmeans(x, k)


def test_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="float32"):
        kmeans(np.zeros((5, 2)), 2)
    with pytest.raises(ValueError, match="NaN"):
        kmeans(np.full((5, 2), np.nan, dtype=np.float32), 2)
    with pytest.raises(ValueError, match="shape"):
        kmeans(np.zeros((5, 2), dtype=np.float32), 2, init=np.zeros((3, 2), dtype=np.float32))


def test_kmeans_plus_plus_recovers_blobs_that_random_init_merges() -> None:
    # 8 tight blobs, one of them 10x as populous as the others: random starts put several
    # centroids in the big blob and merge small ones; k-means++ spreads its seeds apart.
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((8, 6)) * 20
    sizes = [400] + [40] * 7
    ids = np.repeat(np.arange(8), sizes)
    x = (centers[ids] + rng.standard_normal((ids.size, 6)) * 0.1).astype(np.float32)
    random_scores = [
        adjusted_rand_score(ids, kmeans(x, 8, niter=10, seed=s).assignments) for s in range(5)
    ]
    assert min(random_scores) < 1.0  # random init merges blobs for some seed
    for seed in range(5):
        plus = kmeans(x, 8, niter=10, seed=seed, init_method="kmeans++")
        assert adjusted_rand_score(ids, plus.assignments) == 1.0


def test_kmeans_plus_plus_is_deterministic_for_a_seed(make_blobs: Blobs) -> None:
    x, _ = make_blobs(5, 30, 4, spread=2.0)
    a = kmeans(x, 9, niter=2, seed=3, init_method="kmeans++")
    b = kmeans(x, 9, niter=2, seed=3, init_method="kmeans++")
    np.testing.assert_array_equal(a.centroids, b.centroids)
    np.testing.assert_array_equal(a.assignments, b.assignments)
    # Fewer distinct points than k: the seeding still returns k rows, re-seeding splits them.
    dup = np.repeat(x[:3], 4, axis=0)
    _check_valid(kmeans(dup, 6, niter=2, init_method="kmeans++"), 12, 6)


def test_init_setting_is_validated() -> None:
    assert ClusterConfig().init == "random"
    assert ClusterConfig(init="kmeans++").init == "kmeans++"
    with pytest.raises(ValueError, match=r"cluster.init \('kmeans'\) must be random or kmeans\+\+"):
        ClusterConfig(init="kmeans")
    with pytest.raises(ValueError, match=r"cluster\.init"):
        kmeans(np.zeros((4, 2), np.float32), 2, init_method="forgy")
