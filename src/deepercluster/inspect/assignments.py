"""Which image went into which cluster: one row per image, to CSV or Parquet.

Columns: ``id`` (the image's stable integer id), ``path``, ``super_cluster``, ``sub_cluster``
(inside its super-cluster), ``cluster`` (global id ``super * (k // m) + sub``) and
``distance`` (L2 distance to the cluster's centroid in the run's PCA space). Unreadable images
keep their row with cluster -1 and an empty distance, so row i is always image i.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from deepercluster.data.pathmatch import display_paths
from deepercluster.engine.run_folder import open_run
from deepercluster.inspect.embed import has_cached_embedding, run_embedding, write_csv

__all__ = [
    "COLUMNS",
    "Assignments",
    "read_assignments",
    "run_assignments",
    "write_assignments",
]

COLUMNS = ("id", "path", "super_cluster", "sub_cluster", "cluster", "distance")


@dataclass(frozen=True)
class Assignments:
    """The run's clusters, one entry per image (arrays of length N).

    Attributes:
        paths: image display paths (``"<shard>.tar:<member>"`` for tar members).
        super_clusters, sub_clusters, clusters: (N,) int64, -1 for unreadable images.
        distances: (N,) float32 distance to the centroid, NaN when unknown.
    """

    paths: list[str]
    super_clusters: np.ndarray
    sub_clusters: np.ndarray
    clusters: np.ndarray
    distances: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)

    def members(self, cluster: int) -> np.ndarray:
        """Ids of the images of global cluster ``cluster``, nearest to its centroid first."""
        ids = np.flatnonzero(self.clusters == cluster)
        order = np.argsort(np.nan_to_num(self.distances[ids], nan=np.inf), kind="stable")
        members: np.ndarray = ids[order]
        return members


def _format(fmt: str | None, path: Path) -> str:
    fmt = fmt or path.suffix.lstrip(".").lower()
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"unknown assignments format {fmt!r} for {path}; use csv or parquet")
    return fmt


def write_assignments(table: Assignments, path: str | Path, *, fmt: str | None = None) -> Path:
    """Write ``table`` to ``path`` as CSV or Parquet (``fmt``, default from the suffix)."""
    path = Path(path)
    fmt = _format(fmt, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = {
        "id": np.arange(len(table), dtype=np.int64),
        "path": table.paths,
        "super_cluster": table.super_clusters.astype(np.int64),
        "sub_cluster": table.sub_clusters.astype(np.int64),
        "cluster": table.clusters.astype(np.int64),
        "distance": table.distances,
    }
    if fmt == "csv":
        write_csv(path, columns)
        return path
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns["path"] = pa.array(table.paths, type=pa.string())
    columns["distance"] = pa.array(
        table.distances, type=pa.float32(), from_pandas=True
    )  # NaN = null
    pq.write_table(pa.table(columns), path)
    return path


def read_assignments(path: str | Path, *, fmt: str | None = None) -> Assignments:
    """Read a file written by :func:`write_assignments`."""
    path = Path(path)
    fmt = _format(fmt, path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        data = pq.read_table(path).to_pydict()
        cols = {k: data[k] for k in COLUMNS}
        distances = [np.nan if d is None else d for d in cols["distance"]]
    else:
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        cols = {k: [r[k] for r in rows] for k in COLUMNS}
        distances = [np.nan if d == "" else float(d) for d in cols["distance"]]
    if [int(i) for i in cols["id"]] != list(range(len(cols["id"]))):
        raise ValueError(f"{path}: ids are not 0..N-1 in order; was it written by deepercluster?")
    return Assignments(
        paths=[str(p) for p in cols["path"]],
        super_clusters=np.asarray(cols["super_cluster"], dtype=np.int64),
        sub_clusters=np.asarray(cols["sub_cluster"], dtype=np.int64),
        clusters=np.asarray(cols["cluster"], dtype=np.int64),
        distances=np.asarray(distances, dtype=np.float32),
    )


def run_assignments(
    run_dir: str | Path,
    *,
    data: str | None = None,
    with_distances: bool | str = True,
    batch_size: int = 64,
    workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Assignments:
    """The assignments of a run folder's last clustering.

    Args:
        run_dir: the run folder.
        data: the run's images, when they moved (same N images).
        with_distances: extract features to measure distances to the centroids (cached in
            ``run_dir/report/cache``, shared with ``inspect``); False leaves them NaN;
            ``"cached"`` measures them only when that cache is already there.
        batch_size, workers, device, progress: feature extraction.
    """
    run = open_run(run_dir)
    collection = run.collection(data)
    c = run.clustering
    distances = np.full(run.n_images, np.nan, dtype=np.float32)
    cache = run.path / "report" / "cache"
    if with_distances == "cached":
        with_distances = has_cached_embedding(run, cache)
    if with_distances:
        distances = run_embedding(
            run,
            collection,
            cache_dir=cache,
            batch_size=batch_size,
            workers=workers,
            device=device,
            progress=progress,
        ).distances
    return Assignments(
        paths=display_paths(collection),
        super_clusters=np.where(c.valid, c.super_clusters, -1),
        sub_clusters=np.where(c.valid, c.sub_clusters, -1),
        clusters=c.labels.astype(np.int64),
        distances=distances,
    )
