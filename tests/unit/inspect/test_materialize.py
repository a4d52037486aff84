"""Clusters as folders of symlinks/copies or as list files."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from tests.unit.inspect.conftest import TinyRun

from deepercluster.inspect.assignments import Assignments, run_assignments
from deepercluster.inspect.materialize import materialize


def test_link_folders_hold_exactly_the_members(tiny_run: TinyRun, tmp_path: Path) -> None:
    table = run_assignments(tiny_run.path, with_distances=False)
    written = materialize(table, tmp_path / "clusters", mode="link")
    assert sorted(written) == [-1, *range(6)]
    for cluster, folder in written.items():
        linked = {str(p.resolve()) for p in folder.iterdir()}
        want = {
            str(Path(table.paths[i]).resolve()) for i in np.flatnonzero(table.clusters == cluster)
        }
        assert linked == want, cluster
        assert all(p.is_symlink() for p in folder.iterdir())
        if cluster >= 0:
            assert folder.parent.name == f"super-{cluster // 3:03d}"
    assert [p.name for p in written[-1].iterdir()] == [f"{tiny_run.bad_id:08d}_img_bad.png"]


def test_lists_and_refusing_a_non_empty_target(tiny_run: TinyRun, tmp_path: Path) -> None:
    table = run_assignments(tiny_run.path, with_distances=False)
    written = materialize(table, tmp_path / "lists", mode="lists")
    for cluster, path in written.items():
        lines = path.read_text().splitlines()
        assert sorted(lines) == sorted(
            table.paths[i] for i in np.flatnonzero(table.clusters == cluster)
        )
    with pytest.raises(ValueError, match="not empty"):
        materialize(table, tmp_path / "lists", mode="lists")


def test_copy_extracts_tar_members_and_link_refuses_them(tmp_path: Path) -> None:
    shard = tmp_path / "s.tar"
    payloads = {f"d/{i}.jpg": bytes([i]) * (10 + i) for i in range(3)}
    with tarfile.open(shard, "w") as tar:
        for name, data in payloads.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    names = list(payloads)
    table = Assignments(
        paths=[f"{shard}:{n}" for n in names],
        super_clusters=np.array([0, 0, 1]),
        sub_clusters=np.array([0, 0, 0]),
        clusters=np.array([0, 0, 1]),
        distances=np.array([0.2, 0.1, 0.3], dtype=np.float32),
    )
    with pytest.raises(ValueError, match="--copy"):
        materialize(table, tmp_path / "links", mode="link")
    written = materialize(table, tmp_path / "copies", mode="copy")
    got = {p.name: p.read_bytes() for p in written[0].iterdir()}
    assert got == {"00000000_0.jpg": payloads["d/0.jpg"], "00000001_1.jpg": payloads["d/1.jpg"]}
    assert [p.read_bytes() for p in written[1].iterdir()] == [payloads["d/2.jpg"]]
