"""Level-2 runs side by side: same clustering for any schedule, thread shares, errors, run store."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import faiss
import numpy as np
import pytest

from deepercluster.cluster import hierarchical_kmeans, kmeans
from deepercluster.cluster.level2_runs import level2_workers, run_level2
from deepercluster.engine.stages import ClusteringStage


def _points(n: int = 900, dim: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((30, dim)) * 4
    return (centres[rng.integers(30, size=n)] + rng.standard_normal((n, dim))).astype(np.float32)


def test_any_number_of_workers_gives_the_same_clustering() -> None:
    x = _points()
    results, progress = [], []
    for workers in (1, 2, 4, None):
        calls: list[tuple[int, int]] = []
        results.append(
            hierarchical_kmeans(
                x,
                k=36,
                m=6,
                niter=4,
                workers=workers,
                on_level_done=lambda d, t, calls=calls: calls.append((d, t)),
            )
        )
        progress.append(calls)
    first = results[0].to_dict()
    for result, calls in zip(results[1:], progress[1:], strict=True):
        for key, value in result.to_dict().items():
            np.testing.assert_array_equal(value, first[key], err_msg=key)
        assert calls == progress[0] == [(d, 7) for d in range(1, 8)]


def test_default_workers_bound_the_memory_in_flight() -> None:
    assert level2_workers(16, 2) == 2  # the cores bound it
    assert level2_workers(16, 64) == 5  # m // 3 runs: at most the features' size in copies
    assert level2_workers(4, 8) == level2_workers(2, 8) == level2_workers(1, 8) == 1


def test_each_run_gets_its_share_of_faiss_threads() -> None:
    seen: list[tuple[int, str]] = []

    def level2(s: int) -> int:
        seen.append((faiss.omp_get_max_threads(), threading.current_thread().name))
        return s * s

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(4)
    try:
        assert run_level2(level2, 6, 2, None) == [s * s for s in range(6)]
        assert {threads for threads, _ in seen} == {2}
        assert all(name.startswith("level2-kmeans") for _, name in seen)
        assert faiss.omp_get_max_threads() == 4  # the caller's setting is untouched
        seen.clear()
        assert run_level2(level2, 3, 1, None) == [0, 1, 4]
        assert seen == [(4, threading.current_thread().name)] * 3  # serial: in this thread
    finally:
        faiss.omp_set_num_threads(before)


def test_a_failing_run_raises_and_drops_the_runs_not_started() -> None:
    started: list[int] = []

    def level2(s: int) -> int:
        started.append(s)
        if s == 1:
            raise ValueError("run 1 failed")
        time.sleep(0.2)
        return s

    with pytest.raises(ValueError, match="run 1 failed"):
        run_level2(level2, 12, 2, None)
    assert len(started) < 12


def test_the_run_store_names_runs_by_their_number(tmp_path: Path) -> None:
    x = _points(300)
    stage = ClusteringStage(tmp_path / "stage", {"round": 0})
    computed: list[int] = []
    safe_points: list[str] = []

    def run(number: int, rows: np.ndarray | None, k: int, seed: int, init: None) -> object:
        computed.append(number)
        return kmeans(x if rows is None else x[rows], k, niter=2, seed=seed, init=init)

    cached = stage.cached_runs(run, lambda stage, what: safe_points.append(what))
    # Out of order, as runs side by side finish: each is filed under its own number.
    third = cached(3, np.arange(100, 200), 4, 7, None)
    first = cached(1, None, 5, 0, None)
    assert computed == [3, 1] and len(safe_points) == 2
    again = ClusteringStage(tmp_path / "stage", {"round": 0}).cached_runs(run, None)
    np.testing.assert_array_equal(again(1, None, 5, 0, None).centroids, first.centroids)
    np.testing.assert_array_equal(
        again(3, np.arange(100, 200), 4, 7, None).assignments, third.assignments
    )
    assert computed == [3, 1]  # both reloaded, nothing recomputed
