"""``deepercluster curate RUN``: curate a finished run's images with its own network and clusters.

A run folder keeps its last clustering (labels, PCA, centroids) but not the embeddings it was
computed from. The run's network therefore embeds its images once more, chunk by chunk, into a
resumable :class:`~deepercluster.cluster.store.FeatureStore` under ``RUN/curate/embeddings``
(the run's PCA projection and whitening); a second curation of the same checkpoint reads them
back. Memory stays bounded by ``CurateSettings.max_memory`` whatever N is: the store is read
in blocks.

The network trained on after its last clustering, so the PCA's mean no longer centres its
features: they all share one direction, and after a few epochs two unrelated images already
sit at cosine 0.9, which would make every image a near-duplicate of every other. The rows are
therefore centred on today's mean before the L2 normalisation (:class:`CentredRows`), and the
run's clusters get centroids in that space: the mean of their members.

Near-duplicates are searched inside those clusters but compared with other descriptors: a conv
layer's (``settings.dedup_layer``, see :mod:`deepercluster.curate.descriptors`), stored beside
the embeddings under ``RUN/curate/<layer>``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse
import torch
from torch.utils.data import DataLoader

from deepercluster.cluster import HierarchicalResult, PCAWhitening
from deepercluster.cluster.blocks import RowSource, row_blocks
from deepercluster.cluster.store import FeatureStore
from deepercluster.curate.descriptors import EMBEDDING, WhitenedRows, check_layer, layer_rows
from deepercluster.curate.lists import write_curation
from deepercluster.curate.select import Curation, select
from deepercluster.curate.settings import CurateSettings
from deepercluster.data import ClusterTransform, ClusterView, Collection
from deepercluster.data.pathmatch import display_paths
from deepercluster.engine.run_folder import RunFolder, open_run
from deepercluster.features import extract_features

__all__ = ["CentredRows", "CurateResult", "cluster_means", "curate_run", "run_embeddings"]


@dataclass(frozen=True)
class CurateResult:
    """A finished curation.

    Attributes:
        curation: the decision per image.
        files: kept list, dropped list, groups, summary (see :mod:`.lists`).
        seconds: wall time of (embedding, selection, writing).
        tar_members: the images are members of tar shards, which ``train --data`` reads from
            the shards themselves, not from a list of members.
    """

    curation: Curation
    files: list[Path]
    seconds: tuple[float, float, float]
    tar_members: bool


class CentredRows:
    """A store's rows minus ``mean``, L2-normalised on every read (a :class:`RowSource`).

    Args:
        store: (N, d) rows.
        mean: (d,) float32 subtracted from every row.
    """

    def __init__(self, store: FeatureStore, mean: np.ndarray) -> None:
        self.store, self.mean = store, mean.astype(np.float32)
        self.rows, self.dim = store.rows, store.dim

    def _finish(self, x: np.ndarray) -> np.ndarray:
        x = x - self.mean
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        out: np.ndarray = x / np.maximum(norms, np.finfo(np.float32).tiny)
        return out

    def read(self, start: int, stop: int) -> np.ndarray:
        return self._finish(self.store.read(start, stop))

    def take(self, rows: np.ndarray) -> np.ndarray:
        return self._finish(self.store.take(rows))


def cluster_means(
    rows: RowSource, labels: np.ndarray, k: int, *, block_rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """The mean of all rows with a label, and the mean of each cluster's rows, in one pass.

    Args:
        rows: (N, d) rows.
        labels: (N,) int64 cluster in [0, k), -1 for rows to leave out.
        k: clusters.
        block_rows: rows read at once.

    Returns:
        (d,) float32 overall mean, (k, d) float32 cluster means (zeros for an empty cluster).
    """
    sums = np.zeros((k, rows.dim), np.float64)
    for start, block in row_blocks(rows, block_rows):
        lab = labels[start : start + len(block)]
        ok = np.flatnonzero(lab >= 0)
        # A sparse (k, b) one-hot product sums each cluster's rows in one call.
        onehot = scipy.sparse.csr_matrix((np.ones(len(ok)), (lab[ok], ok)), shape=(k, len(block)))
        sums += onehot @ block.astype(np.float64)
    counts = np.bincount(labels[labels >= 0], minlength=k).astype(np.float64)
    overall = sums.sum(0) / max(counts.sum(), 1.0)
    means = sums / np.maximum(counts, 1.0)[:, None]
    return overall.astype(np.float32), means.astype(np.float32)


def run_embeddings(
    run: RunFolder,
    collection: Collection,
    folder: Path,
    *,
    chunk_rows: int,
    batch_size: int = 64,
    workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> FeatureStore:
    """The run's images projected and whitened by its PCA, (N, d) rows in a store under ``folder``
    (not yet L2-normalised: see :class:`CentredRows`).

    Chunks already written for this checkpoint are kept (an interrupted call resumes); a
    store written for another checkpoint is replaced.

    Raises:
        ValueError: the run never clustered (RotNet, k = m = 1).
    """
    pca, _ = _clustering_space(run)
    key_file = folder / "key.json"
    key = {"checkpoint": run.checkpoint_id, "chunk_rows": chunk_rows, "rows": "projected"}
    if folder.exists() and (not key_file.is_file() or json.loads(key_file.read_text()) != key):
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key_file.write_text(json.dumps(key))
    store = FeatureStore(folder, rows=len(collection), dim=pca.dim, chunk_rows=chunk_rows)
    if store.complete:
        return store
    dev = torch.device(device)
    model = run.backbone().to(dev)
    raw_dim = pca.projection.shape[0]
    transform = ClusterTransform(run.config.data.resolution, run.config.data.resize or None)
    for chunk in range(store.chunks_done, store.n_chunks):
        lo, hi = store.chunk_range(chunk)
        view = ClusterView(collection, transform, indices=np.arange(lo, hi))
        loader = DataLoader(view, batch_size=batch_size, shuffle=False, num_workers=workers)
        out = extract_features(
            model, loader, hi - lo, raw_dim, device=dev, offset=lo, progress=progress,
            desc=f"embed chunk {chunk + 1}/{store.n_chunks}",
        )  # fmt: skip
        rows = np.zeros((hi - lo, pca.dim), np.float32)
        if out.valid.any():
            rows[out.valid] = pca.project(out.features[out.valid])
        store.write_chunk(chunk, rows, out.valid, out.skipped)
    return store


def _clustering_space(run: RunFolder) -> tuple[PCAWhitening, HierarchicalResult]:
    pca, result = run.clustering.pca, run.clustering.result
    if pca is None or result is None:
        raise ValueError(
            f"{run.path} has no clustering to curate with (a RotNet run, k = m = 1, never "
            "clusters); curate a run trained with clusters (the deepercluster or deepcluster "
            "preset)"
        )
    return pca, result


def _file_bytes(paths: list[str]) -> np.ndarray:
    """(N,) file sizes; 0 for what cannot be stat'ed (tar members, moved files)."""
    out = np.zeros(len(paths), dtype=np.int64)
    for i, p in enumerate(paths):
        try:
            out[i] = os.stat(p).st_size
        except OSError:
            out[i] = 0
    return out


def curate_run(
    run_dir: str | Path,
    settings: CurateSettings,
    out: str | Path,
    *,
    data: str | None = None,
    batch_size: int = 64,
    workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> CurateResult:
    """Curate the images of the run in ``run_dir`` and write the lists beside ``out``.

    Args:
        run_dir: the run folder (``deepercluster train --out``).
        settings: the curation settings.
        out: the kept list (CSV) to write.
        data: the run's images, when they moved (the same N images).
        batch_size, workers, device: embedding extraction (``device`` also runs the
            similarity products).
        progress: progress bars.

    Raises:
        ValueError: a run without clustering, or a size the pool cannot give (one line with
            the fix, as every message of :func:`~deepercluster.curate.select.select`).
    """
    run = open_run(run_dir)
    pca, result = _clustering_space(run)
    readable = int(run.clustering.valid.sum())
    if settings.size > readable:  # before minutes of extraction
        raise ValueError(
            f"--size {settings.size} is larger than the pool: {run.path} has {readable} "
            f"readable images; ask for at most {readable}"
        )
    layer = settings.dedup_layer if settings.dedup is not None else EMBEDDING
    check_layer(run.backbone(), layer)
    collection = run.collection(data)
    tic = time.perf_counter()
    # Half the memory bound for a chunk of raw features (D floats per image, before the PCA).
    raw_dim = int(pca.projection.shape[0])
    chunk_rows = int(min(65536, max(256, settings.max_memory // (8 * raw_dim))))
    store = run_embeddings(
        run,
        collection,
        run.path / "curate" / "embeddings",
        chunk_rows=chunk_rows,
        batch_size=batch_size,
        workers=workers,
        device=device,
        progress=progress,
    )
    descriptors = None
    if layer != EMBEDDING:
        pooled = layer_rows(
            run.backbone(),
            collection,
            run.path / "curate" / layer,
            layer=layer,
            weights=run.checkpoint_id,
            resolution=run.config.data.resolution,
            resize=run.config.data.resize or None,
            chunk_rows=chunk_rows,
            batch_size=batch_size,
            workers=workers,
            device=device,
            progress=progress,
        )
        descriptors = WhitenedRows(pooled, block_rows=settings.block_rows)
    t_embed = time.perf_counter() - tic
    c = run.clustering
    ok = c.valid & store.valid()
    if descriptors is not None:
        ok &= descriptors.store.valid()
    labels = np.where(ok, c.labels, -1).astype(np.int64)
    m, per_super, _ = result.sub_centroids.shape
    paths = display_paths(collection)
    tic = time.perf_counter()
    everything = np.where(labels >= 0, 0, -1)
    mean, _ = cluster_means(store, everything, 1, block_rows=settings.block_rows)
    rows = CentredRows(store, mean)
    _, centroids = cluster_means(rows, labels, m * per_super, block_rows=settings.block_rows)
    descriptor_centroids = None
    if descriptors is not None:
        _, descriptor_centroids = cluster_means(
            descriptors, labels, m * per_super, block_rows=settings.block_rows
        )
    cur = select(
        rows,
        labels,
        centroids,
        np.arange(m * per_super) // per_super,
        settings,
        file_bytes=_file_bytes(paths) if settings.keep == "largest" else None,
        descriptors=descriptors,
        descriptor_centroids=descriptor_centroids,
        device=device,
    )
    t_select = time.perf_counter() - tic
    tic = time.perf_counter()
    summary = {
        "run": str(run.path.resolve()),
        "epoch": run.epoch,
        "images": run.n_images,
        "settings": settings.to_dict(),
        "seconds": {"embed": round(t_embed, 3), "select": round(t_select, 3)},
    }
    files = write_curation(
        cur, paths, out, pick=settings.pick, cap=settings.per_cluster_cap, summary=summary
    )
    seconds = (t_embed, t_select, time.perf_counter() - tic)
    return CurateResult(cur, files, seconds, tar_members=any(".tar:" in p for p in paths[:1]))
