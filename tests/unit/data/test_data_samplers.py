"""Epoch plans: equal draws per pseudo-label, exclusions, determinism, rotations, super-classes."""

from __future__ import annotations

import numpy as np
import pytest

from deepercluster.data import EpochPlan, super_class_epoch_plan, uniform_epoch_plan


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


# ---- super_class_epoch_plan: one training group's epoch ----

M = 3


def _two_level() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Super-cluster 1 has sub-clusters of 200, 20 and 2 images (one unreadable); the others
    # reuse sub-cluster id 0, so a leak would hide in the counts but not in `sup`.
    sup = np.array([0] * 100 + [1] * 222 + [2] * 50, dtype=np.int64)
    sub = np.array([0] * 100 + [0] * 200 + [1] * 20 + [2] * 2 + [0] * 50, dtype=np.int64)
    valid = np.ones(len(sup), dtype=bool)
    valid[320] = False  # one of the two images of sub-cluster 2
    return sup, sub, valid


def _plan(
    g: int,
    *,
    rotation: bool = True,
    size: int = 300,
    seed: int = 0,
    epoch: int = 0,
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    m: int = M,
) -> EpochPlan:
    sup, sub, valid = _two_level() if arrays is None else arrays
    return super_class_epoch_plan(
        sup,
        sub,
        valid,
        super_class=g,
        n_super_clusters=m,
        rotation=rotation,
        size=size,
        seed=seed,
        epoch=epoch,
    )


@pytest.mark.parametrize("rot", range(4))
def test_super_class_plan_draws_only_its_super_cluster_and_rotation(rot: int) -> None:
    sup, sub, valid = _two_level()
    plan = _plan(rot * M + 1)  # super-cluster 1, rotation rot
    assert len(plan) == 300 and plan.indices.dtype == np.int64
    assert (sup[plan.indices] == 1).all() and valid[plan.indices].all()
    assert plan.rotations.dtype == np.int64 and (plan.rotations == rot).all()
    counts = dict(zip(*np.unique(sub[plan.indices], return_counts=True), strict=True))
    assert counts == {0: 100, 1: 100, 2: 100}  # equal per sub-cluster, small ones re-used
    assert set(plan.indices[sub[plan.indices] == 2].tolist()) == {321}  # not the invalid 320


def test_super_class_plan_counts_never_differ_by_more_than_one() -> None:
    _, sub, _ = _two_level()
    plan = _plan(1, size=301)
    counts = np.unique(sub[plan.indices], return_counts=True)[1]
    assert counts.sum() == 301 and counts.max() - counts.min() <= 1


def test_super_class_plan_is_deterministic_per_seed_epoch_and_class() -> None:
    a = _plan(4, seed=2, epoch=5)
    b = _plan(4, seed=2, epoch=5)
    assert np.array_equal(a.indices, b.indices) and np.array_equal(a.rotations, b.rotations)
    # Another rotation of the same super-cluster (g = 1 vs 4) draws its own images and order.
    for other in (_plan(4, seed=2, epoch=6), _plan(4, seed=3, epoch=5), _plan(1, seed=2, epoch=5)):
        assert not np.array_equal(a.indices, other.indices)


def test_super_class_plan_without_rotation() -> None:
    sup, _, _ = _two_level()
    for g in range(M):
        plan = _plan(g, rotation=False, size=40)
        assert (sup[plan.indices] == g).all() and not plan.rotations.any()
    with pytest.raises(ValueError, match=r"super_class must be in \[0, 3\)"):
        _plan(M, rotation=False)


def test_super_class_plan_errors() -> None:
    sup, sub, valid = _two_level()
    with pytest.raises(ValueError, match=r"super_class must be in \[0, 12\)"):
        _plan(12)
    with pytest.raises(ValueError, match=r"super_class must be in \[0, 12\)"):
        _plan(-1)
    valid[sup == 2] = False
    with pytest.raises(ValueError, match=r"super-cluster 2 \(super-class 5\) has no valid image"):
        _plan(5, size=9, arrays=(sup, sub, valid))
    with pytest.raises(ValueError, match="equal length"):
        _plan(0, size=9, arrays=(sup, sub[:-1], valid))
    with pytest.raises(ValueError, match="bool"):
        _plan(0, size=9, arrays=(sup, sub, valid.astype(np.int64)))
    with pytest.raises(ValueError, match="n_super_clusters must be >= 1"):
        _plan(0, size=9, m=0)
    with pytest.raises(ValueError, match="epoch size must be positive"):
        _plan(0, size=0)
