"""Clusters as folders on disk: symlinks, copies, or one list file per cluster.

Layout under the target folder (c = global cluster id, s = its super-cluster)::

    super-<s>/cluster-<c>/<id>_<name>     (--link or --copy)
    super-<s>/cluster-<c>.txt             (--lists: one path per line)
    unreadable/ or unreadable.txt         (images the run could not read)

Members are ordered nearest to the centroid first when the assignments carry distances, else
by image id. Images inside tar shards cannot be symlinked; ``copy`` extracts them, ``lists``
names them as ``<shard>.tar:<member>``.
"""

from __future__ import annotations

import functools
import os
import shutil
import tarfile
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from deepercluster.inspect.assignments import Assignments

__all__ = ["MODES", "materialize"]

MODES = ("link", "copy", "lists")
_TAR_MARK = ".tar:"


def materialize(table: Assignments, out: str | Path, *, mode: str = "link") -> dict[int, Path]:
    """Write one folder (or list file) per cluster.

    Args:
        table: the run's assignments (paths and clusters by image id).
        out: target folder; must not exist or be empty.
        mode: ``link`` (absolute symlinks), ``copy``, or ``lists``.

    Returns:
        Global cluster id -> the folder or list file written for it (-1: unreadable images).

    Raises:
        ValueError: unknown mode, non-empty target, or ``link`` with images inside tar shards.
    """
    if mode not in MODES:
        raise ValueError(f"unknown materialize mode {mode!r}; choose one of {MODES}")
    root = Path(out)
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"{root} is not empty; choose a new folder (nothing is overwritten)")
    if mode == "link" and any(_TAR_MARK in p for p in table.paths):
        raise ValueError(
            "the images are inside tar shards, which cannot be symlinked; use --copy to "
            "extract them or --lists to write list files"
        )
    root.mkdir(parents=True, exist_ok=True)
    written: dict[int, Path] = {}
    with ExitStack() as stack:

        @functools.cache
        def shard(name: str) -> tarfile.TarFile:  # each shard opened (and indexed) once
            return stack.enter_context(tarfile.open(name, "r:"))

        for cluster in np.unique(table.clusters).tolist():
            members = table.members(cluster)
            if cluster < 0:
                target = root / "unreadable"
            else:
                super_cluster = int(table.super_clusters[members[0]])
                target = root / f"super-{super_cluster:03d}" / f"cluster-{cluster:06d}"
            if mode == "lists":
                target = target.with_suffix(".txt")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text("".join(f"{table.paths[i]}\n" for i in members))
            else:
                target.mkdir(parents=True)
                for i in members.tolist():
                    _place(table.paths[i], target / _entry_name(i, table.paths[i]), mode, shard)
            written[cluster] = target
    return written


def _entry_name(index: int, path: str) -> str:
    # The id prefix keeps names unique when two folders hold files of the same name.
    return f"{index:08d}_{Path(path.split(_TAR_MARK)[-1]).name}"


def _place(source: str, target: Path, mode: str, shard: Callable[[str], tarfile.TarFile]) -> None:
    if _TAR_MARK in source:
        name, member = source.split(_TAR_MARK, 1)
        fh = shard(name + ".tar").extractfile(member)
        if fh is None:
            raise ValueError(f"{name}.tar has no file member {member!r}; was the shard replaced?")
        target.write_bytes(fh.read())
    elif mode == "link":
        os.symlink(os.path.abspath(source), target)
    else:
        shutil.copy2(source, target)
