"""Features of images in a run's clustering space, and their nearest super/sub-cluster.

The clustering space is the run's PCA-whitened, L2-normalised feature space (the input of its
k-means). An image's nearest cluster is found the way the hierarchy was built: the nearest
super-centroid first, then the nearest sub-centroid inside that super-cluster (DeeperCluster,
Caron et al., ICCV 2019, arXiv 1905.01278, section 3.2).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from deepercluster.cluster import HierarchicalResult, PCAWhitening, assign
from deepercluster.data import ClusterTransform, ClusterView, Collection, open_collection
from deepercluster.data.pathmatch import display_paths
from deepercluster.engine.run_folder import RunFolder, open_run
from deepercluster.features import extract_features

__all__ = [
    "Embedding",
    "embed_collection",
    "embed_new_images",
    "has_cached_embedding",
    "nearest_clusters",
    "run_embedding",
    "write_csv",
    "write_embedding",
]

# Images per extraction chunk: the (chunk, D) raw features are projected right away, so memory
# is O(N * pca_dim) rather than O(N * D) (D = 4096 for VGG-16).
_CHUNK = 4096


@dataclass(frozen=True)
class Embedding:
    """Images in a run's clustering space.

    Attributes:
        features: (N, d) float32 PCA-whitened, L2-normalised features (zeros where unreadable).
        valid: (N,) bool, readable images.
        super_clusters: (N,) int64 nearest super-cluster (-1 where unreadable).
        sub_clusters: (N,) int64 nearest sub-cluster inside it (-1 where unreadable).
        labels: (N,) int64 global sub-cluster ``super * (k // m) + sub`` (-1 where unreadable).
        distances: (N,) float32 L2 distance to that sub-centroid (NaN where unreadable).
    """

    features: np.ndarray
    valid: np.ndarray
    super_clusters: np.ndarray
    sub_clusters: np.ndarray
    labels: np.ndarray
    distances: np.ndarray


def nearest_clusters(
    x: np.ndarray, result: HierarchicalResult
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest super-centroid, then nearest sub-centroid of that super-cluster.

    Args:
        x: (n, d) float32 features in the clustering space.
        result: the run's hierarchical k-means result (centroids).

    Returns:
        super (n,) int64, sub (n,) int64, distance (n,) float32 (L2, not squared).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    supers, _ = assign(x, result.super_centroids)
    subs = np.zeros(len(x), dtype=np.int64)
    sq = np.zeros(len(x), dtype=np.float32)
    for s in np.unique(supers):
        rows = np.flatnonzero(supers == s)
        subs[rows], sq[rows] = assign(np.ascontiguousarray(x[rows]), result.sub_centroids[s])
    return supers, subs, np.sqrt(sq)


@torch.no_grad()
def embed_collection(
    model: nn.Module,
    collection: Collection,
    pca: PCAWhitening,
    result: HierarchicalResult,
    *,
    resolution: int,
    resize: int | None = None,
    batch_size: int = 64,
    workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Embedding:
    """Extract, PCA-whiten and assign every image of ``collection``, in chunks.

    Args:
        model: the run's backbone, (B, 3, R, R) -> (B, D).
        collection: N images.
        pca: the run's PCA whitening (D -> d).
        result: the run's centroids.
        resolution, resize: the run's clustering-time preprocessing (centre crop side R).
        batch_size: images per forward pass.
        workers: DataLoader processes.
        device: where the model runs.
        progress: show a progress bar per chunk.

    Returns:
        The :class:`Embedding` of the N images.
    """
    device = torch.device(device)
    model = model.to(device).eval()
    n, dim = len(collection), pca.projection.shape[0]
    features = np.zeros((n, pca.dim), dtype=np.float32)
    valid = np.zeros(n, dtype=bool)
    transform = ClusterTransform(resolution, resize)
    for lo in range(0, n, _CHUNK):
        hi = min(lo + _CHUNK, n)
        view = ClusterView(collection, transform, indices=np.arange(lo, hi))
        loader = DataLoader(view, batch_size=batch_size, shuffle=False, num_workers=workers)
        chunk = extract_features(
            model, loader, hi - lo, dim, device=device, offset=lo, progress=progress
        )
        valid[lo:hi] = chunk.valid
        if chunk.valid.any():
            features[lo:hi][chunk.valid] = pca.apply(chunk.features[chunk.valid])
    supers = np.full(n, -1, dtype=np.int64)
    subs = np.full(n, -1, dtype=np.int64)
    distances = np.full(n, np.nan, dtype=np.float32)
    if valid.any():
        supers[valid], subs[valid], distances[valid] = nearest_clusters(features[valid], result)
    per_super = result.sub_centroids.shape[1]
    labels = np.where(valid, supers * per_super + subs, -1)
    return Embedding(features, valid, supers, subs, labels, distances)


def run_embedding(
    run: RunFolder,
    collection: Collection,
    *,
    cache_dir: Path | None = None,
    batch_size: int = 64,
    workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Embedding:
    """The run's own images in its clustering space, cached in ``cache_dir``.

    The checkpoint's network has trained since its last clustering, so these features are
    close to, not identical with, the ones k-means saw; the distances reported are those of
    today's network to the run's centroids.

    The cache (``features.npy``, ``valid.npy``, ``key.json``) is reused while the checkpoint
    file is unchanged (its size and modification time are the key).
    """
    c = run.clustering
    key = run.checkpoint_id
    cached = _read_cache(cache_dir, key) if cache_dir is not None else None
    if cached is None:
        emb = _embed_with_run(run, collection, batch_size, workers, device, progress)
        features, valid = emb.features, emb.valid
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
            np.save(cache_dir / "features.npy", features)
            np.save(cache_dir / "valid.npy", valid)
            (cache_dir / "key.json").write_text(json.dumps({"checkpoint": key}))
    else:
        features, valid = cached
    # The run's own assignments (not the nearest clusters): what the report and exports show.
    _, result = _clustering_space(run)
    ok = valid & c.valid
    diff = features[ok] - result.sub_centroids[c.super_clusters[ok], c.sub_clusters[ok]]
    distances = np.full(len(valid), np.nan, dtype=np.float32)
    distances[ok] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return Embedding(
        features,
        ok,
        np.where(c.valid, c.super_clusters, -1),
        np.where(c.valid, c.sub_clusters, -1),
        c.labels,
        distances,
    )


def _clustering_space(run: RunFolder) -> tuple[PCAWhitening, HierarchicalResult]:
    """The run's PCA and centroids, or an error for runs that never clustered."""
    pca, result = run.clustering.pca, run.clustering.result
    if pca is None or result is None:
        raise ValueError(
            f"{run.path} has no PCA or centroids (a RotNet run, k = m = 1, never clusters): "
            "there are no clusters to inspect or embed in"
        )
    return pca, result


def _embed_with_run(
    run: RunFolder,
    collection: Collection,
    batch_size: int,
    workers: int,
    device: str | torch.device,
    progress: bool,
) -> Embedding:
    """:func:`embed_collection` with the run's network, clustering and crop settings."""
    return embed_collection(
        run.backbone(),
        collection,
        *_clustering_space(run),
        resolution=run.config.data.resolution,
        resize=run.config.data.resize or None,
        batch_size=batch_size,
        workers=workers,
        device=device,
        progress=progress,
    )


def has_cached_embedding(run: RunFolder, cache_dir: Path) -> bool:
    """Whether ``cache_dir`` holds this checkpoint's features (no extraction needed)."""
    return _read_cache(cache_dir, run.checkpoint_id) is not None


def _read_cache(cache_dir: Path, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        if json.loads((cache_dir / "key.json").read_text())["checkpoint"] != key:
            return None
        return np.load(cache_dir / "features.npy"), np.load(cache_dir / "valid.npy")
    except (OSError, ValueError, KeyError):
        return None


def write_embedding(emb: Embedding, paths: list[str], out: str | Path) -> list[Path]:
    """Save an embedding as ``.npy`` (+ ``<stem>.clusters.csv``) or as one ``.parquet`` table.

    ``.npy``: the (N, d) float32 features; the CSV next to it has ``id, path, readable,
    super_cluster, sub_cluster, cluster, distance`` per row. ``.parquet``: the same columns
    plus ``features`` (a list of d floats per image).

    Returns:
        The files written.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    columns = {
        "id": np.arange(len(paths), dtype=np.int64),
        "path": paths,
        "readable": emb.valid,
        "super_cluster": emb.super_clusters,
        "sub_cluster": emb.sub_clusters,
        "cluster": emb.labels,
        "distance": emb.distances,
    }
    if out.suffix.lower() == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        d = emb.features.shape[1]
        flat = pa.array(emb.features.reshape(-1), type=pa.float32())
        table = pa.table({**columns, "features": pa.FixedSizeListArray.from_arrays(flat, d)})
        pq.write_table(table, out)
        return [out]
    if out.suffix.lower() != ".npy":
        raise ValueError(f"cannot write an embedding to {out}: use a .npy or .parquet file name")
    np.save(out, emb.features)
    table_path = out.with_name(out.stem + ".clusters.csv")
    write_csv(table_path, columns)
    return [out, table_path]


def write_csv(path: Path, columns: dict[str, Any]) -> None:
    """One row per image under a header of the column names; NaN is an empty cell, a bool 0/1."""

    def cell(value: object) -> object:
        if isinstance(value, float | np.floating):
            return "" if math.isnan(value) else repr(float(value))
        return int(value) if isinstance(value, bool | np.bool_) else value

    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        writer.writerows([cell(v) for v in row] for row in zip(*columns.values(), strict=True))


def embed_new_images(
    run_dir: str | Path,
    data: str,
    out: str | Path,
    *,
    batch_size: int = 64,
    workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> list[Path]:
    """``deepercluster embed``: place the images of ``data`` in the run's clustering space.

    Returns:
        The files written (see :func:`write_embedding`).
    """
    run = open_run(run_dir)
    _clustering_space(run)  # fail before reading the images
    cfg = run.config.data
    collection = open_collection(
        data, max_pixels=cfg.max_pixels, path_column=cfg.path_column, max_bytes=cfg.max_file_bytes
    )
    emb = _embed_with_run(run, collection, batch_size, workers, device, progress)
    return write_embedding(emb, display_paths(collection), out)
