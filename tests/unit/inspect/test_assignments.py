"""Assignments export: CSV and Parquet round trips, and the table of a run folder."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from tests.unit.inspect.conftest import TinyRun

from deepercluster.inspect.assignments import (
    Assignments,
    read_assignments,
    run_assignments,
    write_assignments,
)


def _table() -> Assignments:
    return Assignments(
        paths=["/a/x.jpg", "/b/with, comma.png", 'q"uote.jpg', "s.tar:dir/m.jpg"],
        super_clusters=np.array([0, 1, -1, 1]),
        sub_clusters=np.array([2, 0, -1, 1]),
        clusters=np.array([2, 3, -1, 4]),
        distances=np.array([0.1234567, 1.5, np.nan, 2e-8], dtype=np.float32),
    )


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_round_trip(tmp_path, fmt: str) -> None:
    table = _table()
    path = write_assignments(table, tmp_path / f"a.{fmt}")
    back = read_assignments(path)
    assert back.paths == table.paths
    for name in ("super_clusters", "sub_clusters", "clusters", "distances"):
        np.testing.assert_array_equal(getattr(back, name), getattr(table, name))


def test_unknown_format_names_the_choices(tmp_path) -> None:
    with pytest.raises(ValueError, match="csv or parquet"):
        write_assignments(_table(), tmp_path / "a.xlsx")


def test_members_are_sorted_by_distance() -> None:
    table = _table()
    table.distances[3] = 0.01
    table.clusters[3] = 2
    assert table.members(2).tolist() == [3, 0]


def test_run_assignments_match_the_checkpoint(tiny_run: TinyRun) -> None:
    table = run_assignments(tiny_run.path, progress=False)
    c = tiny_run.clustering
    np.testing.assert_array_equal(table.clusters, c.labels)
    assert table.paths[tiny_run.bad_id].endswith("img_bad.png")
    assert table.super_clusters[tiny_run.bad_id] == -1
    assert np.isfinite(table.distances[c.valid]).all() and (table.distances[c.valid] > 0).all()
    bare = run_assignments(tiny_run.path, with_distances=False)
    assert np.isnan(bare.distances).all()


def test_cached_distances_only_when_features_are_cached(tiny_run: TinyRun, tmp_path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for name in ("checkpoint.pth", "config.json"):
        shutil.copy2(tiny_run.path / name, run / name)
    assert np.isnan(run_assignments(run, with_distances="cached").distances).all()
    measured = run_assignments(run, progress=False).distances  # extracts and caches
    np.testing.assert_array_equal(run_assignments(run, with_distances="cached").distances, measured)
