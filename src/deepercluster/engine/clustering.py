"""The re-clustering stage: extract, PCA-whiten, hierarchical k-means (ALGORITHM.md section 2).

DeeperCluster, Caron et al. 2019 (https://arxiv.org/abs/1905.01278), section 3.2: every
``cluster.reassign`` epochs the targets are recomputed from the current network's features.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from deepercluster import distributed
from deepercluster.cluster import (
    HierarchicalResult,
    PCAWhitening,
    fit_pca,
    fit_pca_distributed,
    hierarchical_kmeans,
    hierarchical_kmeans_distributed,
    hierarchical_kmeans_grouped,
)
from deepercluster.config import RunConfig
from deepercluster.data import ClusterTransform, ClusterView, Collection
from deepercluster.evaluation.nmi import nmi
from deepercluster.features import extract_features
from deepercluster.log import get_logger

log = get_logger("cluster")

# (ranks of each super-cluster's clustering group, the matching process groups)
Level2Groups = tuple[list[list[int]], list[Any]]


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
    """

    labels: np.ndarray
    super_clusters: np.ndarray
    sub_clusters: np.ndarray
    valid: np.ndarray
    result: HierarchicalResult | None
    pca: PCAWhitening | None
    metrics: dict[str, float]

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
) -> tuple[Clustering, list[tuple[int, str]]]:
    """Compute new targets with the current network.

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

    Returns:
        The new :class:`Clustering` and the (index, reason) of images that could not be read.

    Raises:
        ValueError: no readable image, or fewer readable images than ``cluster.k``.
    """
    n = len(collection)
    c = cfg.cluster
    # ============ sharded extraction: each rank its slice of the collection ============
    lo, hi = distributed.shard_range(n)
    view = ClusterView(
        collection,
        ClusterTransform(cfg.data.resolution, cfg.data.resize or None),
        indices=np.arange(lo, hi),
    )
    loader = DataLoader(
        view,
        batch_size=max(cfg.train.batch_size, 64),
        shuffle=False,
        num_workers=cfg.data.workers,
        # Its own generator: drawing worker seeds from the global RNG would shift dropout
        # masks of the training that follows (and break resume-equals-uninterrupted).
        generator=torch.Generator().manual_seed(cfg.train.seed),
    )
    tic = time.perf_counter()
    extracted = extract_features(
        model,
        loader,
        hi - lo,
        feature_dim,
        device=device,
        precision=cfg.train.precision,
        offset=lo,
        progress=progress,
    )
    t_extract = time.perf_counter() - tic
    valid = distributed.all_gather_cat_np(extracted.valid)  # (N,), the same on every rank
    skipped = [e for part in distributed.all_gather_object(extracted.skipped) for e in part]
    n_valid = int(valid.sum())
    if n_valid == 0:
        raise ValueError(
            f"none of the {n} images could be read (see skipped.csv in the run folder); "
            "check data.path points at image files"
        )
    if n_valid < c.k:
        raise ValueError(
            f"only {n_valid} of {n} images are readable, fewer than cluster.k ({c.k}); "
            f"lower cluster.k to at most {n_valid - n_valid % c.super_clusters}"
        )
    # Each rank keeps its own features: PCA from all-reduced moments, k-means with a local
    # assignment step and all-reduced sums; only the labels travel (ALGORITHM.md section 6).
    local_ids = np.arange(lo, hi)[extracted.valid]
    clustering = _cluster(
        extracted.features[extracted.valid],
        local_ids,
        valid,
        cfg,
        epoch=epoch,
        previous=previous,
        level2_groups=level2_groups,
        progress=progress,
    )
    clustering.metrics["time/extract_s"] = t_extract
    clustering.metrics["speed/extract_images_per_s"] = extracted.images_per_second
    return clustering, skipped


def _cluster(
    x: np.ndarray,
    local_ids: np.ndarray,
    valid: np.ndarray,
    cfg: RunConfig,
    *,
    epoch: int,
    previous: Clustering | None,
    level2_groups: Level2Groups | None,
    progress: bool,
) -> Clustering:
    """PCA-whiten and cluster the readable images' features, this rank holding some of them.

    Args:
        x: (n_local, D) features of this rank's readable images.
        local_ids: (n_local,) their collection indices (contiguous shards, in rank order).
        valid: (N,) bool, readable images of the whole collection (same on every rank).
    """
    c = cfg.cluster
    n, n_valid = len(valid), int(valid.sum())
    many = distributed.world_size() > 1
    tic = time.perf_counter()
    pca_dim = min(c.pca_dim, x.shape[1], n_valid - 1)
    if pca_dim < c.pca_dim:
        log.warning(
            "cluster.pca_dim=%d is more than the data supports (feature dim %d, %d images); "
            "using %d",
            c.pca_dim,
            x.shape[1],
            n_valid,
            pca_dim,
        )
    sample = c.pca_sample or None
    if many:
        pca = fit_pca_distributed(
            x, dim=pca_dim, power=c.whiten_power, sample=sample, seed=cfg.train.seed
        )
        # eigh may round differently on different machines: rank 0's projection for all.
        pca = distributed.broadcast_object(pca)
    else:
        pca = fit_pca(x, dim=pca_dim, power=c.whiten_power, sample=sample, seed=cfg.train.seed)
    reduced = pca.apply(x)
    t_pca = time.perf_counter() - tic

    tic = time.perf_counter()
    warm = None
    if c.warm_start and previous is not None and previous.result is not None:
        warm = _warm_start(reduced, local_ids, previous, k=c.k, m=c.super_clusters, seed=epoch)
    seed = cfg.train.seed * 100_003 + epoch
    threads = cfg.train.threads or torch.get_num_threads()  # fit() set it for this process
    if many:
        if level2_groups is not None:
            local = hierarchical_kmeans_grouped(
                reduced,
                k=c.k,
                m=c.super_clusters,
                groups=level2_groups[0],
                process_groups=level2_groups[1],
                niter=c.niter,
                seed=seed,
                init=warm,
                threads=threads,
            )
        else:
            local = hierarchical_kmeans_distributed(
                reduced,
                k=c.k,
                m=c.super_clusters,
                niter=c.niter,
                seed=seed,
                init=warm,
                threads=threads,
            )
        result = dataclasses.replace(
            local,
            super_assignments=distributed.all_gather_cat_np(local.super_assignments),
            sub_assignments=distributed.all_gather_cat_np(local.sub_assignments),
        )
    else:
        with tqdm(
            total=c.super_clusters + 1, desc="k-means", unit="run", disable=not progress
        ) as bar:
            result = hierarchical_kmeans(
                reduced,
                k=c.k,
                m=c.super_clusters,
                niter=c.niter,
                seed=seed,
                init=warm,
                threads=threads,
                on_level_done=lambda done, total: bar.update(done - bar.n),
            )
    t_kmeans = time.perf_counter() - tic

    labels = np.full(n, -1, dtype=np.int64)
    super_clusters = np.zeros(n, dtype=np.int64)
    sub_clusters = np.zeros(n, dtype=np.int64)
    labels[valid] = result.labels
    super_clusters[valid] = result.super_assignments
    sub_clusters[valid] = result.sub_assignments
    sizes = np.bincount(result.labels, minlength=c.k)
    metrics = {
        "cluster/epoch": float(epoch),
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


def _warm_start(
    reduced: np.ndarray, local_ids: np.ndarray, previous: Clustering, *, k: int, m: int, seed: int
) -> HierarchicalResult:
    """Initial centroids from the previous round's clusters, expressed in this round's space.

    PCA is refitted every round, so the previous centroids live in other coordinates; the means
    of the previous clusters' members under the new features are the right starting point
    (sums and counts are all-reduced, so every rank gets the same centroids). A cluster none of
    whose members is readable now starts from a random unit vector.

    Args:
        reduced: (n_local, d) this round's whitened features of this rank's readable images.
        local_ids: (n_local,) their collection indices.
        previous: the last round's clustering (labels by collection index).
        k, m: sub-clusters in all and super-clusters.
        seed: for the random fallback (the same on every rank).
    """
    rng = np.random.default_rng(seed)
    per_super = k // m
    super_prev = previous.super_clusters[local_ids]
    sub_prev = previous.sub_clusters[local_ids]
    known = previous.valid[local_ids]
    dim = reduced.shape[1]

    def means(groups: np.ndarray, n_groups: int) -> np.ndarray:
        sums = np.zeros((n_groups, dim))
        np.add.at(sums, groups[known], reduced[known])
        counts = np.bincount(groups[known], minlength=n_groups).astype(np.float64)
        sums = distributed.all_reduce_sum_np(sums)
        counts = distributed.all_reduce_sum_np(counts)
        out = sums / np.maximum(counts, 1)[:, None]
        empty = counts == 0
        fallback = rng.normal(size=(int(empty.sum()), dim))
        out[empty] = fallback / np.linalg.norm(fallback, axis=1, keepdims=True)
        return out.astype(np.float32)

    return HierarchicalResult(
        super_assignments=super_prev,
        sub_assignments=sub_prev,
        super_centroids=means(super_prev, m),
        sub_centroids=means(super_prev * per_super + sub_prev, k).reshape(m, per_super, dim),
        objective=0.0,
        super_objective=0.0,
        n_reseeded=0,
        n_moved=0,
    )
