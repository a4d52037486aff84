"""The re-clustering stage: extract, PCA-whiten, hierarchical k-means (ALGORITHM.md section 2).

DeeperCluster, Caron et al. 2019 (https://arxiv.org/abs/1905.01278), section 3.2: every
``cluster.reassign`` epochs the targets are recomputed from the current network's features.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepercluster import distributed
from deepercluster.cluster import Blocks, HierarchicalResult, PCAWhitening
from deepercluster.config import ClusterConfig, RunConfig
from deepercluster.data import ClusterTransform, Collection
from deepercluster.engine.extraction import extract_to_store
from deepercluster.engine.failures import NoReadableImages
from deepercluster.engine.head_start import HeadInputs, head_inputs
from deepercluster.engine.outofcore import block_rows, check_memory, extraction_chunk
from deepercluster.engine.pca_kmeans import Features, Level2Groups, RoundResult, cluster_features
from deepercluster.engine.stages import ClusteringStage, SafePoint, stage_root
from deepercluster.evaluation.nmi import nmi
from deepercluster.log import get_logger

log = get_logger("cluster")

_NOT_IN_STAGE_KEY = frozenset({"memory_limit", "head_init", "head_temperature", "super_carry"})


@dataclass(frozen=True)
class Clustering:
    """Targets of every image of the collection after one re-clustering.

    Attributes:
        labels: (N,) int64 global sub-cluster id in [0, k), -1 for unreadable images.
        super_clusters: (N,) int64 super-cluster in [0, m) (0 for unreadable images).
        sub_clusters: (N,) int64 sub-cluster inside its super-cluster (0 for unreadable).
        valid: (N,) bool, readable images (the only ones ever sampled for training).
        result: the k-means result over the valid images (centroids, for warm starts).
        pca: the PCA-whitening fitted on this round's features.
        metrics: numbers for the log (objective, sizes, NMI with the previous round, speed).
        head_inputs: statistics of the features as the heads read them, for
            ``cluster.head_init = centroids``; kept only until the heads have started, never
            saved.
    """

    labels: np.ndarray
    super_clusters: np.ndarray
    sub_clusters: np.ndarray
    valid: np.ndarray
    result: HierarchicalResult | None
    pca: PCAWhitening | None
    metrics: dict[str, float]
    head_inputs: HeadInputs | None = None

    def without_head_inputs(self) -> Clustering:
        """This clustering once the heads have started from it."""
        return dataclasses.replace(self, head_inputs=None)

    def to_dict(self) -> dict[str, Any]:
        """Plain arrays and numbers for a checkpoint."""
        out: dict[str, Any] = {
            "labels": self.labels,
            "super_clusters": self.super_clusters,
            "sub_clusters": self.sub_clusters,
            "valid": self.valid,
            "metrics": dict(self.metrics),
        }
        if self.result is not None:
            out["result"] = self.result.to_dict()
        if self.pca is not None:
            out["pca"] = self.pca.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Clustering:
        return cls(
            labels=np.asarray(data["labels"]),
            super_clusters=np.asarray(data["super_clusters"]),
            sub_clusters=np.asarray(data["sub_clusters"]),
            valid=np.asarray(data["valid"]),
            result=HierarchicalResult.from_dict(data["result"]) if "result" in data else None,
            pca=PCAWhitening.from_dict(data["pca"]) if "pca" in data else None,
            metrics=dict(data["metrics"]),
        )


def trivial_clustering(n_images: int) -> Clustering:
    """RotNet (k = m = 1): every image is in the single cluster; nothing to extract or fit."""
    zeros = np.zeros(n_images, dtype=np.int64)
    return Clustering(zeros, zeros, zeros, np.ones(n_images, dtype=bool), None, None, {})


def recluster(
    model: nn.Module,
    feature_dim: int,
    collection: Collection,
    cfg: RunConfig,
    *,
    epoch: int,
    device: torch.device,
    previous: Clustering | None,
    level2_groups: Level2Groups | None = None,
    progress: bool = True,
    work_dir: Path | None = None,
    safe_point: SafePoint | None = None,
    heading: str | None = None,
) -> tuple[Clustering, list[tuple[int, str]]]:
    """Compute new targets with the current network.

    Every finished piece of work (extraction chunk, PCA, k-means run) is saved under
    ``work_dir`` as it completes (:mod:`~deepercluster.engine.stages`), so a call interrupted
    by a crash or a stop signal and made again resumes where the first one stopped.

    Args:
        model: the backbone, (B, 3, H, W) -> (B, D); run in eval mode on centre crops.
        feature_dim: D.
        collection: the images.
        cfg: run configuration (data, cluster and train sections are used).
        epoch: current epoch, mixed into the k-means seed so every round draws new inits.
        device: where the model runs.
        previous: last round's clustering (warm start, NMI between rounds), or None.
        level2_groups: (ranks, process groups) of one clustering group per super-cluster
            (the paper's grouped layout): level 2 then runs in those groups, concurrently.
        progress: show progress bars.
        work_dir: the run folder that keeps the round's stage checkpoints (the caller
            deletes them with :func:`clear_stage` once the targets are saved); None: a
            temporary folder, deleted on return.
        safe_point: ``safe_point(stage, what)`` after each saved piece of work (stop checks).
        heading: e.g. ``"clustering for epoch 3/30"``: log a heading line before extraction
            and before PCA and k-means (None: no headings).

    Returns:
        The new :class:`Clustering` and the (index, reason) of images that could not be read.

    Raises:
        ValueError: no readable image, fewer readable images than ``cluster.k``, or a
            memory store that would not fit in ``cluster.memory_limit``.
    """
    n = len(collection)
    c = cfg.cluster
    lo, hi = distributed.shard_range(n)
    check_memory(c, rows=hi - lo, dim=feature_dim)
    with ExitStack() as stack:
        if work_dir is None:
            work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dc-stage-")))
        key = {
            "epoch": epoch,
            "n_images": n,
            "first": lo,
            "rows": hi - lo,
            "dim": feature_dim,
            "world_size": distributed.world_size(),
            "resolution": cfg.data.resolution,
            "resize": cfg.data.resize,
            # The default init leaves the key of stages saved before cluster.init existed;
            # how the heads start does not change the clustering.
            "cluster": {
                k: v
                for k, v in asdict(c).items()
                if k not in _NOT_IN_STAGE_KEY and not (k == "init" and v == "random")
            },
        }
        stage = ClusteringStage(stage_root(work_dir, distributed.rank()), key)
        # ============ sharded extraction: each rank its slice, chunk by chunk ============
        store = stage.features(
            rows=hi - lo,
            dim=feature_dim,
            dtype=c.feature_dtype,
            chunk_rows=extraction_chunk(c, feature_dim),
        )
        if heading:
            log.info("%s: extracting features of %s images", heading, f"{n:,}")
        tic = time.perf_counter()
        speed = extract_to_store(
            model,
            collection,
            store,
            transform=ClusterTransform(cfg.data.resolution, cfg.data.resize or None),
            first=lo,
            batch_size=max(cfg.train.batch_size, 64),
            workers=cfg.data.workers,
            seed=cfg.train.seed,
            device=device,
            precision=cfg.train.precision,
            safe_point=safe_point,
            progress=progress,
        )
        t_extract = time.perf_counter() - tic
        valid_local = store.valid()
        valid = distributed.all_gather_cat_np(valid_local)  # (N,), the same on every rank
        skipped = [e for part in distributed.all_gather_object(store.skipped) for e in part]
        n_valid = int(valid.sum())
        if n_valid == 0:
            raise NoReadableImages(
                f"none of the {n} images could be read; check data.path points at image files",
                skipped,
            )
        if n_valid < c.k:
            raise ValueError(
                f"only {n_valid} of {n} images are readable, fewer than cluster.k ({c.k}); "
                f"lower cluster.k to at most {n_valid - n_valid % c.super_clusters}"
            )
        # Each rank keeps its own features: PCA from all-reduced moments, k-means with a
        # local assignment step and all-reduced sums; only the labels travel (ALGORITHM.md
        # section 6).
        if heading:
            log.info("%s: %s", heading, _stages_of(c, feature_dim))
        rnd = cluster_features(
            Features(store, valid_local, np.arange(lo, hi)[valid_local], valid),
            cfg,
            epoch=epoch,
            previous=previous,
            level2_groups=level2_groups,
            stage=stage,
            safe_point=safe_point,
            progress=progress,
            device=device,
        )
        inputs = None
        if c.head_init == "centroids":
            offset = int(valid[:lo].sum())  # this rank's rows in the gathered assignments
            mine = slice(offset, offset + int(valid_local.sum()))
            inputs = head_inputs(
                Blocks(
                    store,
                    members=np.flatnonzero(valid_local),
                    block_rows=block_rows(c, feature_dim),
                ),
                rnd.result.super_assignments[mine],
                rnd.result.sub_assignments[mine],
                m=c.super_clusters,
                n_sub=c.sub_per_super,
            )
    clustering = _targets(rnd, valid, cfg, epoch=epoch, previous=previous)
    clustering = dataclasses.replace(clustering, head_inputs=inputs)
    clustering.metrics["time/extract_s"] = t_extract
    clustering.metrics["speed/extract_images_per_s"] = speed
    return clustering, skipped


def _stages_of(c: ClusterConfig, feature_dim: int) -> str:
    """The PCA and k-means stages of a round, in words (the heading before them)."""
    pca = f"PCA {feature_dim} -> {min(c.pca_dim, feature_dim)} dims"
    if c.super_clusters == 1:
        return f"{pca}, then k-means into {c.k} clusters"
    return (
        f"{pca}, then k-means level 1/2 ({c.super_clusters} super-clusters) and level 2/2 "
        f"({c.sub_per_super} sub-clusters in each)"
    )


def _targets(
    rnd: RoundResult, valid: np.ndarray, cfg: RunConfig, *, epoch: int, previous: Clustering | None
) -> Clustering:
    """Labels of the whole collection (-1 for unreadable images) and the round's metrics."""
    c = cfg.cluster
    n, n_valid = len(valid), int(valid.sum())
    result, pca, pca_dim, t_pca, t_kmeans = (
        rnd.result,
        rnd.pca,
        rnd.pca_dim,
        rnd.t_pca,
        rnd.t_kmeans,
    )
    labels = np.full(n, -1, dtype=np.int64)
    super_clusters = np.zeros(n, dtype=np.int64)
    sub_clusters = np.zeros(n, dtype=np.int64)
    labels[valid] = result.labels
    super_clusters[valid] = result.super_assignments
    sub_clusters[valid] = result.sub_assignments
    sizes = np.bincount(result.labels, minlength=c.k)
    metrics = {
        "cluster/epoch": float(epoch + 1),  # from 1, as in metrics.jsonl
        "cluster/objective": float(result.objective),
        "cluster/super_objective": float(result.super_objective),
        "cluster/size_min": float(sizes.min()),
        "cluster/size_median": float(np.median(sizes)),
        "cluster/size_max": float(sizes.max()),
        "cluster/reseeded": float(result.n_reseeded),
        "cluster/moved": float(result.n_moved),
        "cluster/pca_dim": float(pca_dim),
        "cluster/images": float(n_valid),
        "time/pca_s": t_pca,
        "time/kmeans_s": t_kmeans,
        "speed/kmeans_images_per_s": n_valid / max(t_kmeans, 1e-9),
    }
    if previous is not None and previous.result is not None:
        both = valid & previous.valid
        metrics["cluster/nmi_previous"] = nmi(labels[both], previous.labels[both])
    log.info(
        "clustered %d images into %d x %d clusters: objective %.4g, sizes %d/%g/%d "
        "(min/median/max), %d re-seeded, %d moved between super-clusters; "
        "pca %.1fs, k-means %.1fs",
        n_valid,
        c.super_clusters,
        c.sub_per_super,
        result.objective,
        sizes.min(),
        np.median(sizes),
        sizes.max(),
        result.n_reseeded,
        result.n_moved,
        t_pca,
        t_kmeans,
    )
    return Clustering(labels, super_clusters, sub_clusters, valid.copy(), result, pca, metrics)
