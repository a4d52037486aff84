"""The engine's hierarchy (memory and disk stores) passes the cluster settings on and resumes
from its saved runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from deepercluster.cluster import Blocks, HierarchicalResult, hierarchical, hierarchical_kmeans
from deepercluster.cluster import kmeans as flat_kmeans
from deepercluster.cluster.store import FeatureStore
from deepercluster.config import ClusterConfig, RunConfig
from deepercluster.engine.pca_kmeans import _hierarchy
from deepercluster.engine.stages import ClusteringStage


def _data(n: int = 600, dim: int = 10) -> np.ndarray:
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(12, dim)) * 4
    return (centers[rng.integers(0, 12, n)] + rng.normal(size=(n, dim))).astype(np.float32)


@pytest.mark.parametrize("store", ["memory", "disk"])
@pytest.mark.parametrize("level1_sample", [0, 120])
def test_hierarchy_equals_hierarchical_kmeans_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: str, level1_sample: int
) -> None:
    x = _data()
    cfg = RunConfig(
        cluster=ClusterConfig(k=24, super_clusters=4, niter=5, level1_sample=level1_sample)
    )
    rows = Blocks(torch.from_numpy(x))
    if store == "disk":
        source = FeatureStore(tmp_path / "rows", rows=len(x), dim=x.shape[1], chunk_rows=256)
        for c in range(source.n_chunks):
            start, stop = source.chunk_range(c)
            source.write_chunk(c, x[start:stop])
        rows = Blocks(source, block_rows=100)
    done: list[int] = []

    def run() -> HierarchicalResult:
        return _hierarchy(
            rows,
            cfg,
            seed=11,
            init=None,
            stage=ClusteringStage(tmp_path / "stage", {"test": store}),
            safe_point=None,
            on_level_done=lambda d, _total: done.append(d),
        )

    result = run()
    expected = hierarchical_kmeans(x, k=24, m=4, niter=5, seed=11, level1_sample=level1_sample)
    np.testing.assert_array_equal(result.labels, expected.labels)
    np.testing.assert_allclose(result.super_centroids, expected.super_centroids, atol=1e-5)
    assert result.super_objective == pytest.approx(expected.super_objective, rel=1e-5)
    assert done == [1, 2, 3, 4, 5]

    # A resumed round reloads every saved run (level 1: the sample's fit) and computes none.
    def no_kmeans(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("a saved k-means run was computed again")

    monkeypatch.setattr(hierarchical, "lloyd", no_kmeans)
    resumed = run()
    np.testing.assert_array_equal(resumed.labels, result.labels)
    assert resumed.super_objective == result.super_objective


def test_the_run_store_names_runs_by_their_number(tmp_path: Path) -> None:
    x = _data(300)
    stage = ClusteringStage(tmp_path / "stage", {"round": 0})
    computed: list[int] = []
    safe_points: list[str] = []

    def run(number: int, rows: np.ndarray | None, k: int, seed: int, init: None) -> object:
        computed.append(number)
        return flat_kmeans(x if rows is None else x[rows], k, niter=2, seed=seed, init=init)

    cached = stage.cached_runs(run, lambda stage, what: safe_points.append(what))
    # Out of order: each run is filed under its own number.
    third = cached(3, np.arange(100, 200), 4, 7, None)
    first = cached(1, None, 5, 0, None)
    assert computed == [3, 1] and len(safe_points) == 2
    again = ClusteringStage(tmp_path / "stage", {"round": 0}).cached_runs(run, None)
    np.testing.assert_array_equal(again(1, None, 5, 0, None).centroids, first.centroids)
    np.testing.assert_array_equal(
        again(3, np.arange(100, 200), 4, 7, None).assignments, third.assignments
    )
    assert computed == [3, 1]  # both reloaded, nothing recomputed
