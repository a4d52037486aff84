"""k-means: steps, faiss equivalence, empty clusters, edge cases."""

from __future__ import annotations

from collections.abc import Callable

import faiss
import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from deepercluster.cluster import (
    KMeansResult,
    accumulate,
    assign,
    faiss_threads,
    kmeans,
    update_centroids,
)

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
    sums, counts = accumulate(x, labels, 3)
    assert sums.dtype == np.float64
    np.testing.assert_array_equal(counts, [2, 2, 0])
    np.testing.assert_allclose(sums, [[0, 1], [20, 2], [0, 0]])
    updated = update_centroids(sums, counts, centroids)
    np.testing.assert_allclose(updated, [[0, 0.5], [10, 1], [50, 50]])
    # No empty cluster (the usual case): every centroid is its float32 mean.
    full = update_centroids(sums[:2], counts[:2], centroids[:2])
    assert full.dtype == np.float32
    np.testing.assert_array_equal(full, np.float32([[0, 0.5], [10, 1]]))


def test_accumulate_is_the_same_for_any_input_kind_and_thread_count() -> None:
    rng = np.random.default_rng(3)
    # Four blocks of 16,384 rows (the last one partial): the blocked float64 conversion, and
    # with 2 or 3 threads waves of block products, whose sums must keep the block order.
    x = rng.standard_normal((60_000, 64)).astype(np.float32)
    labels = rng.integers(0, 7, x.shape[0])
    reference = np.zeros((7, 64))
    np.add.at(reference, labels, x.astype(np.float64))
    x64 = x.astype(np.float64)
    frozen, frozen_labels = x64.copy(), labels.copy()
    frozen.flags.writeable = frozen_labels.flags.writeable = False
    first, counts = accumulate(x, labels, 7)
    np.testing.assert_allclose(first, reference, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(counts, np.bincount(labels, minlength=7))
    threads = torch.get_num_threads()
    try:
        for n_threads in (1, 2, 3):
            torch.set_num_threads(n_threads)
            with faiss_threads(n_threads):
                for points, ids in ((x, labels), (x64, labels), (frozen, frozen_labels)):
                    # Bit-equal: every path and rank must sum alike.
                    np.testing.assert_array_equal(accumulate(points, ids, 7)[0], first)
    finally:
        torch.set_num_threads(threads)
    # Over 24 decades of magnitude, float64 sums depend on their order (the ones above are
    # exact): the block products must be added in block order for any thread count.
    wide = (x * 10.0 ** rng.uniform(-12, 12, x.shape)).astype(np.float32)
    with faiss_threads(1):
        in_order = accumulate(wide, labels, 7)[0]
    for n_threads in (2, 3):
        with faiss_threads(n_threads):
            np.testing.assert_array_equal(accumulate(wide, labels, 7)[0], in_order)
    # A rank without rows contributes zeros.
    sums, counts = accumulate(x[:0], labels[:0], 7)
    assert sums.shape == (7, 64) and not sums.any() and not counts.any()


@pytest.mark.parametrize(
    ("n", "dim", "k"), [(20_000, 128, 16), (17_000, 16, 300), (9_000, 64, 5), (4_500, 128, 7)]
)
def test_assign_in_parts_equals_one_faiss_search(n: int, dim: int, k: int) -> None:
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    # Duplicated points tie exactly: the parts must break ties as one search does.
    x[1::97] = x[::97][: len(x[1::97])]
    centroids = np.ascontiguousarray(x[rng.choice(n, k, replace=False)])
    with faiss_threads(1):
        distances, labels = faiss.knn(x, centroids, 1)
    # The BLAS path's |x|^2 + |c|^2 - 2 <x, c>: its rounding, which on some CPUs depends on the
    # rows sharing a product, is a few float32 ulps of those terms.
    ulps = 4 * np.finfo(np.float32).eps * 2 * float((x * x).sum(axis=1).max())
    for threads in (1, 2, 3):
        with faiss_threads(threads):
            ids, sq = assign(x, centroids)
        np.testing.assert_array_equal(ids, labels[:, 0])
        np.testing.assert_allclose(sq, np.maximum(distances[:, 0], 0), rtol=0, atol=ulps)
        # Every part stayed on the BLAS path: the exhaustive path (below faiss' threshold)
        # finds the duplicated points' exact zeros, which the BLAS formula never rounds to.
        at_centroid = (sq == 0) & (distances[:, 0] > 0)
        assert not at_centroid.any(), f"{at_centroid.sum()} points searched off the BLAS path"


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


def test_threads_are_restored() -> None:
    before = faiss.omp_get_max_threads()
    with faiss_threads(1):
        assert faiss.omp_get_max_threads() == 1
    assert faiss.omp_get_max_threads() == before
    x = np.random.default_rng(0).standard_normal((20, 2)).astype(np.float32)
    kmeans(x, 3, niter=1, threads=1)
    assert faiss.omp_get_max_threads() == before
