"""Near-duplicate groups: planted pairs and chains are found, nothing else is merged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deepercluster.cluster import kmeans
from deepercluster.cluster.store import FeatureStore
from deepercluster.curate.duplicates import centroid_sweep, find_duplicates, survivors


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
