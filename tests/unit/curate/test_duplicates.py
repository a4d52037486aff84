"""Near-duplicate groups: planted pairs and chains are found, nothing else is merged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deepercluster.cluster import kmeans
from deepercluster.cluster.store import FeatureStore
from deepercluster.curate.duplicates import (
    centroid_sweep,
    find_duplicates,
    neighbour_density,
)
from deepercluster.curate.survivors import survivors


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _store(tmp_path: Path, x: np.ndarray) -> FeatureStore:
    store = FeatureStore(tmp_path / "emb", rows=len(x), dim=x.shape[1], chunk_rows=500)
    for c in range(store.n_chunks):
        lo, hi = store.chunk_range(c)
        store.write_chunk(c, x[lo:hi])
    return store


def _planted(n: int = 2000, d: int = 32, seed: int = 0) -> tuple[np.ndarray, list[set[int]]]:
    """Random unit vectors (pairwise cosine far below 0.9 in 32-d) with planted groups:
    60 pairs and 10 triples, each copy within cosine ~0.98 of its original."""
    rng = np.random.default_rng(seed)
    x = _unit(rng.standard_normal((n, d)))
    ids = rng.permutation(n)
    groups: list[set[int]] = []
    pos = 0
    for size in [2] * 60 + [3] * 10:
        members = ids[pos : pos + size].tolist()
        pos += size
        for j in members[1:]:
            x[j] = _unit(x[members[0]][None] + 0.03 * rng.standard_normal((1, d)))[0]
        groups.append(set(members))
    return x, groups


def _groups(group: np.ndarray) -> list[set[int]]:
    found: dict[int, set[int]] = {}
    for i in np.flatnonzero(group >= 0).tolist():
        found.setdefault(int(group[i]), set()).add(i)
    return sorted(found.values(), key=min)


def test_every_planted_group_is_found_and_nothing_else(tmp_path: Path) -> None:
    x, planted = _planted()
    cos = [float(x[min(g)] @ x[j]) for g in planted for j in g]
    assert min(cos) > 0.95  # the planted copies are near-duplicates at the 0.95 threshold
    others = x @ x.T - 2 * np.eye(len(x))
    for g in planted:
        for i in g:
            others[i, list(g)] = -1
    assert others.max() < 0.9  # and nothing else is
    km = kmeans(x, 16, niter=5, seed=0)
    labels = km.assignments.astype(np.int64)
    store = _store(tmp_path, x)
    near, _ = centroid_sweep(store, labels, km.centroids, probe=3, block_rows=256)
    found = find_duplicates(store, labels, near, threshold=0.95, max_memory=2**20, block_rows=256)
    assert _groups(found.group) == sorted(planted, key=min)
    assert found.n_groups == 70
    assert found.compared < len(x) ** 2 / 3  # inside clusters, not all pairs


def test_tiny_memory_gives_the_same_groups(tmp_path: Path) -> None:
    x, planted = _planted(n=400)
    km = kmeans(x, 4, niter=5, seed=0)
    labels = km.assignments.astype(np.int64)
    store = _store(tmp_path, x)
    near, _ = centroid_sweep(store, labels, km.centroids, probe=4, block_rows=64)
    big = find_duplicates(store, labels, near, threshold=0.95, max_memory=2**24, block_rows=4096)
    # 150 rows per batch: every cluster is split into many query x database pieces
    small = find_duplicates(store, labels, near, threshold=0.95, max_memory=150 * 32 * 8,
                            block_rows=16)  # fmt: skip
    np.testing.assert_array_equal(small.group, big.group)
    assert _groups(big.group) == sorted(planted, key=min)


def test_a_pair_split_by_a_cluster_border_needs_probe(tmp_path: Path) -> None:
    # Two near-identical points on either side of the border of two clusters.
    x = _unit(np.array([[1.0, 0.01, 0], [1.0, -0.01, 0], [0, 1, 0], [0, -1, 0]], np.float32))
    labels = np.array([0, 1, 0, 1])
    centroids = _unit(np.array([[1.0, 1, 0], [1, -1, 0]], np.float32))
    store = _store(tmp_path, x)
    for probe, expected in ((1, [-1, -1, -1, -1]), (2, [0, 0, -1, -1])):
        near, _ = centroid_sweep(store, labels, centroids, probe=probe, block_rows=2)
        found = find_duplicates(store, labels, near, threshold=0.99, max_memory=2**20,
                                block_rows=2)  # fmt: skip
        assert found.group.tolist() == expected


def test_unreadable_rows_and_threshold_one(tmp_path: Path) -> None:
    x = _unit(np.array([[1, 0], [1, 0], [1, 0], [0, 1], [0.999, 0.04]], np.float32))
    labels = np.array([0, 0, -1, 1, 0])
    store = _store(tmp_path, x)
    near, dist = centroid_sweep(store, labels, x[[0, 3]], probe=2, block_rows=8)
    assert np.isnan(dist[2]) and dist[0] == pytest.approx(0.0, abs=1e-6)
    found = find_duplicates(store, labels, near, threshold=1.0, max_memory=2**20, block_rows=8)
    assert found.group.tolist() == [0, 0, -1, -1, -1]  # row 2 is unreadable, row 4 is not equal


def test_survivors_split_a_chain_into_stars(tmp_path: Path) -> None:
    # a~b and b~c at cosine 0.995, but a.c = 0.98 < 0.99: one component, a chain.
    angle = np.arccos(0.995)
    x = np.array([[np.cos(t), np.sin(t), 0] for t in (-angle, 0.0, angle)], np.float32)
    x = np.vstack([x, [[0, 0, 1]], [[0, 0, 1]]]).astype(np.float32)  # rows 3, 4: a pair
    store = _store(tmp_path, x)
    components = np.array([0, 0, 0, 3, 3])
    # b (row 1) preferred: it stands for both ends of the chain.
    best_b = survivors(store, components, np.array([1.0, 0.0, 2.0, 0.0, 0.0]),
                       threshold=0.99, max_memory=2**20)  # fmt: skip
    assert best_b.duplicate_of.tolist() == [1, -1, 1, -1, 3]
    assert best_b.group.tolist() == [1, 1, 1, 3, 3]
    np.testing.assert_allclose(best_b.similarity[[0, 2, 4]], [0.995, 0.995, 1.0], atol=1e-5)
    # a (row 0) preferred: it takes b; c is not close enough to a and stays alone.
    best_a = survivors(store, components, np.array([0.0, 1.0, 2.0, 0.5, 0.5]),
                       threshold=0.99, max_memory=2**20)  # fmt: skip
    assert best_a.duplicate_of.tolist() == [-1, 0, -1, -1, 3]  # equal scores: the lower row
    assert best_a.group.tolist() == [0, 0, -1, 3, 3]
    with pytest.raises(ValueError, match="chain of 3 near-duplicates does not fit"):
        survivors(store, components, np.zeros(5), threshold=0.99, max_memory=2 * 3 * 4)


def test_neighbour_density_is_the_mean_of_the_nearest_cosines(tmp_path: Path) -> None:
    x, _ = _planted(n=300)
    km = kmeans(x, 4, niter=5, seed=0)
    labels = km.assignments.astype(np.int64)
    labels[7] = -1  # unreadable: no density
    store = _store(tmp_path, x)
    # probe = k: every row meets every other, so the search is the brute-force one
    near, _ = centroid_sweep(store, labels, km.centroids, probe=4, block_rows=32)
    r = neighbour_density(store, labels, near, neighbours=5, max_memory=40 * 32 * 8,
                          block_rows=16)  # fmt: skip
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    sims[:, 7] = -np.inf
    expected = np.sort(sims, axis=1)[:, -5:].mean(1)
    expected[7] = 0.0
    np.testing.assert_allclose(r, expected, atol=1e-5)


def test_local_scaling_separates_a_pair_from_a_crowd_of_look_alikes(tmp_path: Path) -> None:
    """A planted copy (cosine 0.8) among unrelated images is a near-duplicate; twelve images
    that all look alike (pairwise cosine about 0.9: textures, noise) are not, once each
    similarity is scaled by its neighbourhood, except an exact copy of one of them (row 53),
    which scores 1 however crowded. The plain cosine merges the crowd."""
    rng = np.random.default_rng(0)
    d = 64
    sparse = _unit(rng.standard_normal((40, d)))
    copy = _unit(0.8 * sparse[:1] + 0.6 * _unit(rng.standard_normal((1, d))))
    crowd = _unit(
        3 * _unit(rng.standard_normal((1, d))) + rng.standard_normal((12, d)) / np.sqrt(d)
    )
    x = np.vstack([sparse, copy, crowd, crowd[:1]]).astype(np.float32)
    assert 0.75 < x[0] @ x[40] < 0.85 and (x[41:] @ x[41:].T).min() > 0.8
    labels = np.zeros(len(x), np.int64)
    store = _store(tmp_path, x)
    near = np.full((len(x), 0), -1, np.int64)
    memory = {"max_memory": 2**20, "block_rows": 16}
    plain = find_duplicates(store, labels, near, threshold=0.75, **memory)
    assert (plain.group[41:53] >= 0).all()  # the cosine alone merges every look-alike
    r = neighbour_density(store, labels, near, neighbours=3, **memory)
    scaled = find_duplicates(store, labels, near, threshold=0.6, density=r, **memory)
    assert _groups(scaled.group) == [{0, 40}, {41, 53}]
    stars = survivors(store, scaled.group, np.zeros(len(x)), threshold=0.6,
                      max_memory=2**20, density=r)  # fmt: skip
    assert stars.duplicate_of[40] == 0 and stars.duplicate_of[53] == 41
    assert (stars.duplicate_of[41:53] == -1).all()
    assert stars.similarity[40] == pytest.approx(float(x[0] @ x[40]), abs=1e-5)  # the cosine


def test_a_large_group_of_copies_is_held_by_the_cosine_floor(tmp_path: Path) -> None:
    """Ten copies of one image (cosine about 0.94) fill each other's 5 nearest neighbours, so
    the scaled similarity alone scales the group away; the cosine floor keeps it."""
    rng = np.random.default_rng(0)
    d = 64
    sparse = _unit(rng.standard_normal((200, d)))
    copies = _unit(sparse[:1] + 0.35 * rng.standard_normal((10, d)) / np.sqrt(d))
    x = np.vstack([sparse, copies]).astype(np.float32)
    store = _store(tmp_path, x)
    labels = np.zeros(len(x), np.int64)
    near = np.full((len(x), 0), -1, np.int64)
    memory = {"max_memory": 2**22, "block_rows": 64}
    r = neighbour_density(store, labels, near, neighbours=5, **memory)
    alone = find_duplicates(store, labels, near, threshold=0.4, density=r, **memory)
    assert (alone.group[[0, *range(200, 210)]] == -1).all()
    held = find_duplicates(store, labels, near, threshold=0.4, density=r, floor=0.9, **memory)
    assert _groups(held.group) == [{0, *range(200, 210)}]
    stars = survivors(store, held.group, np.zeros(len(x)), threshold=0.4, max_memory=2**22,
                      density=r, floor=0.9)  # fmt: skip
    assert (stars.duplicate_of[200:] == 0).all()


def test_opposite_neighbours_do_not_lower_the_bar(tmp_path: Path) -> None:
    # a.b = 0.25 < 0.4; the third row is opposite to both, so their mean neighbour cosine is
    # negative: clamped at 0, the scaled test asks as much as the plain cosine.
    x = _unit(np.array([[1.0, 0.0], [0.25, 0.968], [-0.6, -0.8]], np.float32))
    store = _store(tmp_path, x)
    labels, near = np.zeros(3, np.int64), np.full((3, 0), -1, np.int64)
    r = neighbour_density(store, labels, near, neighbours=2, max_memory=2**20, block_rows=8)
    assert (r >= 0).all()
    found = find_duplicates(store, labels, near, threshold=0.4, density=r, max_memory=2**20,
                            block_rows=8)  # fmt: skip
    assert (found.group == -1).all()


def test_an_empty_cluster_is_never_a_nearest_other_cluster(tmp_path: Path) -> None:
    # rows weakly aligned with cluster 1: a zero mean (cluster 2, empty) would be "nearer"
    x = _unit(np.array([[1, 0.0, 0], [1, 0.1, 0], [0.1, -1, 0]], np.float32))
    centroids = np.array([[1, 0, 0], [-0.5, 0.5, 0], [0, 0, 0]], np.float32)
    near, _ = centroid_sweep(_store(tmp_path, x), np.array([0, 0, 1]), centroids, probe=2,
                             block_rows=8)  # fmt: skip
    assert near[:, 0].tolist() == [1, 1, 0]
