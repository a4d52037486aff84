"""Water-filling across the hierarchy, picks inside a cluster, and one whole selection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deepercluster.cluster.store import FeatureStore
from deepercluster.curate.sampling import allocate, pick_members, water_fill
from deepercluster.curate.select import DUPLICATE, KEPT, OVER_QUOTA, UNREADABLE, select
from deepercluster.curate.settings import CurateSettings


@pytest.mark.parametrize(
    ("capacity", "budget", "expected"),
    [
        ([5, 5, 5], 7, [3, 2, 2]),  # 7 // 3 = 2 each, the one left goes to the first
        ([1, 7, 4], 10, [1, 5, 4]),  # 1 saturates, then 4, the rest flows to the 7
        ([3, 9, 9], 21, [3, 9, 9]),  # everything
        ([2, 6, 3], 0, [0, 0, 0]),
        ([2, 6, 3], 5, [1, 2, 2]),  # 5 // 3 = 1 each: the 2 left go to the 6, then the 3
    ],
)
def test_water_fill(capacity: list[int], budget: int, expected: list[int]) -> None:
    assert water_fill(np.array(capacity), budget).tolist() == expected


def test_water_fill_refuses_more_than_it_holds() -> None:
    with pytest.raises(ValueError, match="cannot place 8"):
        water_fill(np.array([3, 4]), 8)


def test_allocate_fills_super_clusters_first_then_their_clusters() -> None:
    # Super-clusters hold 22, 4 and 50 images; 30 split evenly is 10 each, the small one gives
    # its 4 and the 26 left split 13 / 13. Inside super 0 (2, 10, 10): the 2 saturates, then
    # 11 over two clusters is 5 + 5 and the unit left goes to the first of the equal ones.
    super_of = np.array([0, 0, 0, 1, 1, 2])
    capacity = np.array([2, 10, 10, 3, 1, 50])
    assert allocate(super_of, capacity, 30).tolist() == [2, 6, 5, 3, 1, 13]


def test_pick_nearest_and_random() -> None:
    members = np.array([3, 5, 8, 9])
    distance = np.zeros(10, np.float32)
    distance[[3, 5, 8, 9]] = [0.4, 0.1, np.nan, 0.1]
    rng = np.random.default_rng(0)
    assert pick_members(members, 2, rule="nearest", distance=distance, rng=rng).tolist() == [5, 9]
    draws = {
        tuple(pick_members(members, 2, rule="random", distance=distance,
                           rng=np.random.default_rng(s)).tolist())
        for s in range(20)
    }  # fmt: skip
    assert len(draws) > 1 and all(set(d) <= {3, 5, 8, 9} for d in draws)


def _store(folder: Path, x: np.ndarray) -> FeatureStore:
    store = FeatureStore(folder, rows=len(x), dim=x.shape[1], chunk_rows=128)
    for c in range(store.n_chunks):
        lo, hi = store.chunk_range(c)
        store.write_chunk(c, x[lo:hi])
    return store


def _pool(tmp_path: Path) -> tuple[FeatureStore, np.ndarray, np.ndarray, np.ndarray]:
    """300 random 16-d points in 6 clusters of very different sizes, 20 planted copies,
    2 unreadable rows. Clusters are hand-labelled by the first coordinate's sign pattern."""
    rng = np.random.default_rng(1)
    sizes = [150, 60, 40, 25, 15, 10]
    labels = np.repeat(np.arange(6), sizes)
    centroids = np.eye(6, 16, dtype=np.float32) * 3
    x = centroids[labels] + rng.standard_normal((300, 16)).astype(np.float32)
    for j in range(20):  # copy of row j (cluster 0) at row 100 + j (cluster 0 too)
        x[100 + j] = x[j] + 0.01 * rng.standard_normal(16)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels[[298, 299]] = -1
    return _store(tmp_path / "emb", x), labels, centroids / 3, np.array([0, 0, 0, 1, 1, 1])


def test_select_drops_copies_and_balances(tmp_path: Path) -> None:
    store, labels, centroids, super_of = _pool(tmp_path)
    settings = CurateSettings(size=60, dedup=0.95, dedup_neighbours=0, seed=3)
    cur = select(store, labels, centroids, super_of, settings)
    counts = cur.counts()
    assert counts == {"kept": 60, "duplicate": 20, "over_quota": 218, "unreadable": 2}
    assert (cur.status[[298, 299]] == UNREADABLE).all()
    dropped = np.flatnonzero(cur.status == DUPLICATE)
    assert sorted(set(dropped) | set(cur.duplicate_of[dropped])) == [
        *range(20), *range(100, 120)
    ]  # fmt: skip
    assert (cur.similarity[dropped] > 0.99).all()
    # pools after the copies left: 130, 60, 40 | 25, 15, 8; supers hold 230 and 48 -> 30 / 30;
    # super 0: 10 each; super 1 (25, 15, 8): the 8 gives all, the 22 left split 11 / 11.
    assert cur.pool.tolist() == [130, 60, 40, 25, 15, 8]
    assert cur.quota.tolist() == [10, 10, 10, 11, 11, 8]
    assert np.bincount(labels[cur.kept], minlength=6).tolist() == cur.quota.tolist()
    again = select(store, labels, centroids, super_of, settings)
    np.testing.assert_array_equal(again.status, cur.status)
    other = select(store, labels, centroids, super_of, CurateSettings(size=60, seed=4))
    assert not np.array_equal(other.kept, cur.kept)
    assert (cur.status[cur.status != KEPT] != KEPT).all() and OVER_QUOTA in cur.status


def test_select_nearest_and_cap(tmp_path: Path) -> None:
    store, labels, centroids, super_of = _pool(tmp_path)
    settings = CurateSettings(size=30, dedup=None, per_cluster_cap=5, pick="nearest")
    cur = select(store, labels, centroids, super_of, settings)
    assert cur.quota.tolist() == [5, 5, 5, 5, 5, 5]
    for c in range(6):
        members = np.flatnonzero(labels == c)
        chosen = np.intersect1d(cur.kept, members)
        rest = np.setdiff1d(members, chosen)
        assert cur.distance[chosen].max() <= cur.distance[rest].min()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(size=299), "larger than the pool: the run has 298 readable images"),
        (dict(size=290, dedup=0.95, dedup_neighbours=0), "278 images remain after de-duplication"),
        (dict(size=40, dedup=None, per_cluster_cap=6), "ask for at most 36"),
    ],
)
def test_select_refuses_a_size_larger_than_the_pool(
    tmp_path: Path, settings: dict[str, object], message: str
) -> None:
    store, labels, centroids, super_of = _pool(tmp_path)
    with pytest.raises(ValueError, match=message):
        select(store, labels, centroids, super_of, CurateSettings(**settings))  # type: ignore[arg-type]


@pytest.mark.parametrize("dedup", [0.0, -0.5, 1.01])
def test_a_threshold_outside_0_1_is_refused(dedup: float) -> None:
    with pytest.raises(ValueError, match=r"outside \(0, 1\]"):
        CurateSettings(size=10, dedup=dedup)


def test_the_other_clusters_searched_are_the_nearest_in_descriptor_space(tmp_path: Path) -> None:
    """Rows 0 and 1 are copies by their descriptors but sit in clusters 0 and 1; in the
    embedding, cluster 2 is the nearest to cluster 0. Probing one other cluster finds the
    pair only when the descriptors choose it."""
    emb = np.array([[1, 0, 0], [0, 1, 0], [0.8, 0, 0.6]], np.float32)  # cluster centroids
    labels = np.array([0, 1, 2, 0, 1, 2])
    desc = np.array([[1, 0, 0], [0.999, 0.04, 0], [0, 0, 1], [0.6, 0, 0.8], [0.6, 0.8, 0],
                     [0, 0.6, 0.8]], np.float32)  # fmt: skip
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    source = _store(tmp_path / "emb", emb[labels])
    descriptors = _store(tmp_path / "desc", desc)
    settings = CurateSettings(size=4, dedup=0.99, dedup_neighbours=0, probe=2)
    means = np.stack([desc[labels == c].mean(0) for c in range(3)])
    args = (source, labels, emb, np.zeros(3, np.int64), settings)
    found = select(*args, descriptors=descriptors, descriptor_centroids=means)
    assert found.duplicate_of.tolist() == [-1, 0, -1, -1, -1, -1]
    # steered to cluster 2 from both sides, the same search misses the pair: the probe
    # follows descriptor_centroids, not the embedding's centroids
    steer = np.array([[0, 0, 1], [0, 0, -1], [1, 0.02, 0]], np.float32)
    missed = select(*args, descriptors=descriptors, descriptor_centroids=steer)
    assert (missed.duplicate_of == -1).all()
    with pytest.raises(ValueError, match="descriptor_centroids"):
        select(*args, descriptors=descriptors)
