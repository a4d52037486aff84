"""uniform_epoch_plan: equal draws per pseudo-label, exclusions, determinism, rotations."""

from __future__ import annotations

import numpy as np
import pytest

from deepercluster.data import EpochPlan, uniform_epoch_plan


def _counts(plan: EpochPlan, labels: np.ndarray) -> dict[int, int]:
    values, counts = np.unique(labels[plan.indices], return_counts=True)
    return dict(zip(values.tolist(), counts.tolist(), strict=True))


def _skewed_labels() -> np.ndarray:
    # One giant cluster, medium ones, a singleton, and excluded images (-1).
    return np.array([0] * 500 + [1] * 60 + [2] * 30 + [3] * 1 + [-1] * 9 + [5] * 40, dtype=np.int64)


def test_equal_counts_when_size_is_a_multiple_of_the_labels() -> None:
    labels = _skewed_labels()
    plan = uniform_epoch_plan(labels, size=500, seed=0, epoch=0, rotation=False)
    assert len(plan) == 500 and plan.indices.dtype == np.int64
    assert _counts(plan, labels) == {0: 100, 1: 100, 2: 100, 3: 100, 5: 100}


@pytest.mark.parametrize("size", [1, 3, 7, 499, 501, 1234])
def test_counts_never_differ_by_more_than_one(size: int) -> None:
    labels = _skewed_labels()
    plan = uniform_epoch_plan(labels, size=size, seed=3, epoch=1, rotation=False)
    counts = list(_counts(plan, labels).values())
    assert len(plan) == size and sum(counts) == size
    assert max(counts) - min(counts) <= 1


def test_large_clusters_without_replacement_small_ones_with() -> None:
    labels = _skewed_labels()
    plan = uniform_epoch_plan(labels, size=250, seed=1, epoch=0, rotation=False)  # 50 per label
    drawn = labels[plan.indices]
    for big in (0, 1):
        members = plan.indices[drawn == big]
        assert len(np.unique(members)) == len(members) == 50
    assert set(plan.indices[drawn == 3].tolist()) == {590}  # the singleton, 50 times
    small = plan.indices[drawn == 2]
    assert len(small) == 50 and len(np.unique(small)) < 50


def test_excluded_images_are_never_drawn() -> None:
    labels = _skewed_labels()
    plan = uniform_epoch_plan(labels, size=2000, seed=0, epoch=0, rotation=True)
    assert (labels[plan.indices] >= 0).all()


def test_deterministic_per_seed_and_epoch() -> None:
    labels = _skewed_labels()
    a = uniform_epoch_plan(labels, size=300, seed=4, epoch=2, rotation=True)
    b = uniform_epoch_plan(labels, size=300, seed=4, epoch=2, rotation=True)
    assert np.array_equal(a.indices, b.indices) and np.array_equal(a.rotations, b.rotations)
    for other in (
        uniform_epoch_plan(labels, size=300, seed=4, epoch=3, rotation=True),
        uniform_epoch_plan(labels, size=300, seed=5, epoch=2, rotation=True),
    ):
        assert not np.array_equal(a.indices, other.indices)


def test_order_is_shuffled() -> None:
    labels = np.repeat(np.arange(10), 10)
    plan = uniform_epoch_plan(labels, size=100, seed=0, epoch=0, rotation=False)
    assert not np.array_equal(np.sort(labels[plan.indices]), labels[plan.indices])


def test_rotations_off_and_on() -> None:
    labels = np.repeat(np.arange(8), 50)
    off = uniform_epoch_plan(labels, size=400, seed=0, epoch=0, rotation=False)
    assert off.rotations.dtype == np.int64 and not off.rotations.any()
    on = uniform_epoch_plan(labels, size=4000, seed=0, epoch=0, rotation=True)
    counts = np.bincount(on.rotations, minlength=4)
    assert len(counts) == 4 and counts.min() > 900  # ~1000 each


def test_errors() -> None:
    with pytest.raises(ValueError, match="no image has a valid pseudo-label"):
        uniform_epoch_plan(np.full(5, -1), size=5, seed=0, epoch=0, rotation=False)
    with pytest.raises(ValueError, match="epoch size must be positive"):
        uniform_epoch_plan(np.zeros(5, np.int64), size=0, seed=0, epoch=0, rotation=False)
    with pytest.raises(ValueError, match=">= -1"):
        uniform_epoch_plan(np.array([0, -2]), size=5, seed=0, epoch=0, rotation=False)
    with pytest.raises(ValueError, match="1-D integer"):
        uniform_epoch_plan(np.zeros(5), size=5, seed=0, epoch=0, rotation=False)
    with pytest.raises(ValueError, match="equal length"):
        EpochPlan(indices=np.zeros(3, np.int64), rotations=np.zeros(2, np.int64))
