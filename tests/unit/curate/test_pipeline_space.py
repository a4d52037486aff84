"""The space curation compares images in: centred on today's mean, clusters' own means."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepercluster.cluster.store import FeatureStore
from deepercluster.curate.pipeline import CentredRows, cluster_means


def test_centred_rows_and_cluster_means(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    # A shared offset (a stale PCA mean) makes unrelated rows look alike.
    x = (rng.standard_normal((50, 8)) + 10.0).astype(np.float32)
    store = FeatureStore(tmp_path / "s", rows=50, dim=8, chunk_rows=16)
    for c in range(store.n_chunks):
        lo, hi = store.chunk_range(c)
        store.write_chunk(c, x[lo:hi])
    labels = rng.integers(0, 3, 50)
    labels[[4, 9]] = -1
    mean, _ = cluster_means(store, np.where(labels >= 0, 0, -1), 1, block_rows=7)
    np.testing.assert_allclose(mean, x[labels >= 0].mean(0), rtol=1e-5)
    rows = CentredRows(store, mean)
    y = x - mean
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    np.testing.assert_allclose(rows.read(0, 50), y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rows.take(np.array([7, 3])), y[[7, 3]], rtol=1e-5, atol=1e-6)
    cos = y @ y.T
    assert np.abs(cos[np.triu_indices(50, 1)]).mean() < 0.5  # no longer all alike
    _, centroids = cluster_means(rows, labels, 4, block_rows=7)
    for c in range(3):
        np.testing.assert_allclose(centroids[c], y[labels == c].mean(0), rtol=1e-4, atol=1e-6)
    assert not centroids[3].any()  # an empty cluster
