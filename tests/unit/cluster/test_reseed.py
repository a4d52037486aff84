"""Empty-cluster re-seeding: donor choice, perturbation, member split, rounds."""

from __future__ import annotations

import numpy as np
import pytest

from deepercluster.cluster import fill_empty, reseed_empty, split_members
from deepercluster.cluster.reseed import SPLIT_EPS


def test_nothing_to_do_without_empty_clusters() -> None:
    centroids = np.eye(3, dtype=np.float32)
    out, pairs = reseed_empty(centroids, np.array([1, 2, 3]), np.random.default_rng(0))
    np.testing.assert_array_equal(out, centroids)
    assert pairs.shape == (0, 2)


def test_pairs_have_distinct_eligible_donors_and_symmetric_perturbation() -> None:
    centroids = np.arange(1, 13, dtype=np.float32).reshape(6, 2)
    counts = np.array([0, 5, 0, 1, 7, 0])
    out, pairs = reseed_empty(centroids, counts, np.random.default_rng(0))
    # Only clusters 1 and 4 have >= 2 members: two of the three empty ones are filled.
    np.testing.assert_array_equal(pairs[:, 0], [0, 2])
    assert sorted(pairs[:, 1].tolist()) == [1, 4]
    for empty, donor in pairs:
        sign = np.array([1.0, -1.0]) * SPLIT_EPS
        np.testing.assert_allclose(out[empty], centroids[donor] * (1 + sign), rtol=1e-6)
        np.testing.assert_allclose(out[donor], centroids[donor] * (1 - sign), rtol=1e-6)
    np.testing.assert_array_equal(out[[3, 5]], centroids[[3, 5]])


def test_donor_probability_is_proportional_to_size() -> None:
    counts = np.array([0, 10, 30])
    centroids = np.zeros((3, 2), dtype=np.float32)
    rng = np.random.default_rng(0)
    donors = [reseed_empty(centroids, counts, rng)[1][0, 1] for _ in range(2000)]
    assert np.mean(np.array(donors) == 2) == pytest.approx(0.75, abs=0.04)


def test_same_generator_state_same_choice() -> None:
    counts = np.array([0, 0, 4, 4, 4, 4])
    centroids = np.random.default_rng(1).standard_normal((6, 3)).astype(np.float32)
    a = reseed_empty(centroids, counts, np.random.default_rng(7))
    b = reseed_empty(centroids, counts, np.random.default_rng(7))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_no_donor_raises() -> None:
    with pytest.raises(ValueError, match="k must not exceed"):
        reseed_empty(np.zeros((3, 1), np.float32), np.array([1, 1, 0]), np.random.default_rng(0))


def test_split_members_nearest_of_the_two() -> None:
    x = np.array([[-1.0], [-2.0], [1.0], [2.0], [5.0]], dtype=np.float32)
    assignments = np.array([1, 1, 1, 1, 2])
    centroids = np.array([[0.5], [-0.5], [5.0]], dtype=np.float32)
    out = split_members(x, assignments, centroids, np.array([[0, 1]]))
    np.testing.assert_array_equal(out, [1, 1, 0, 0, 2])
    np.testing.assert_array_equal(assignments, [1, 1, 1, 1, 2])  # input untouched


@pytest.mark.parametrize(("n", "kept"), [(2, 1), (5, 3), (6, 3)])
def test_split_members_falls_back_to_halves(n: int, kept: int) -> None:
    # Duplicated points are equidistant from both halves: the donor keeps the first ceil(n/2).
    x = np.ones((n, 2), dtype=np.float32)
    centroids = np.ones((2, 2), dtype=np.float32)
    out = split_members(x, np.zeros(n, dtype=np.int64), centroids, np.array([[1, 0]]))
    np.testing.assert_array_equal(out, [0] * kept + [1] * (n - kept))


def test_fill_empty_runs_rounds_until_none_is_empty() -> None:
    x = np.random.default_rng(0).standard_normal((8, 2)).astype(np.float32)
    assignments = np.zeros(8, dtype=np.int64)
    centroids = np.zeros((8, 2), dtype=np.float32)
    out, _, pairs = fill_empty(x, assignments, centroids, np.random.default_rng(0))
    np.testing.assert_array_equal(np.sort(out), np.arange(8))
    assert pairs.shape == (7, 2)
    # Within one round a donor is used once and a new cluster is not yet a donor.
    assert pairs[0, 1] == 0
