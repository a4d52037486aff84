"""The engine's one-process hierarchy (memory and disk stores) passes the cluster settings on
and resumes from its saved runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deepercluster.cluster import HierarchicalResult, hierarchical_kmeans
from deepercluster.cluster.store import FeatureStore
from deepercluster.config import ClusterConfig, RunConfig
from deepercluster.engine import pca_kmeans
from deepercluster.engine.pca_kmeans import _hierarchy_one_process
from deepercluster.engine.stages import ClusteringStage


def _data(n: int = 600, dim: int = 10) -> np.ndarray:
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(12, dim)) * 4
    return (centers[rng.integers(0, 12, n)] + rng.normal(size=(n, dim))).astype(np.float32)


@pytest.mark.parametrize(("store", "workers"), [("memory", None), ("disk", None), ("disk", 3)])
@pytest.mark.parametrize("level1_sample", [0, 120])
def test_one_process_hierarchy_equals_hierarchical_kmeans_and_resumes(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    store: str,
    workers: int | None,
    level1_sample: int,
) -> None:
    x = _data()
    cfg = RunConfig(
        cluster=ClusterConfig(k=24, super_clusters=4, niter=5, level1_sample=level1_sample)
    )
    rows: np.ndarray | FeatureStore = x
    if store == "disk":
        rows = FeatureStore(tmp_path / "rows", rows=len(x), dim=x.shape[1], chunk_rows=256)
        for c in range(rows.n_chunks):
            start, stop = rows.chunk_range(c)
            rows.write_chunk(c, x[start:stop])
    done: list[int] = []

    def hierarchy() -> HierarchicalResult:
        return _hierarchy_one_process(
            rows,
            cfg,
            seed=11,
            init=None,
            block=100,
            stage=ClusteringStage(tmp_path / "stage", {"test": store}),
            safe_point=None,
            on_level_done=lambda d, _total: done.append(d),
            workers=workers,
        )

    result = hierarchy()
    expected = hierarchical_kmeans(x, k=24, m=4, niter=5, seed=11, level1_sample=level1_sample)
    np.testing.assert_array_equal(result.labels, expected.labels)
    np.testing.assert_allclose(result.super_centroids, expected.super_centroids, atol=1e-5)
    assert result.super_objective == pytest.approx(expected.super_objective, rel=1e-5)
    assert sorted(done) == [1, 2, 3, 4, 5]

    # A resumed round reloads every saved run (level 1: the sample's fit) and computes none.
    def no_kmeans(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("a saved k-means run was computed again")

    monkeypatch.setattr(pca_kmeans, "lloyd", no_kmeans)
    monkeypatch.setattr(pca_kmeans, "kmeans_chunked", no_kmeans)
    resumed = hierarchy()
    np.testing.assert_array_equal(resumed.labels, result.labels)
    assert resumed.super_objective == result.super_objective
