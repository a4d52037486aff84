"""PCA whitening and hierarchical k-means of one clustering round, saved piece by piece.

The PCA and every finished k-means run of the hierarchy are written to the round's
:class:`~deepercluster.engine.stages.ClusteringStage` as they complete and reloaded, not
recomputed, when the round is resumed (in one process and with all ranks clustering
together; the grouped layout's per-super-cluster clustering groups redo their level 2).
The features are :class:`~deepercluster.cluster.Blocks`: a tensor in memory, or with
``cluster.feature_store = "disk"`` their stores streamed in blocks
(:mod:`~deepercluster.engine.outofcore`); the same PCA and k-means code runs on both.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm import tqdm

from deepercluster import distributed
from deepercluster.cluster import (
    Blocks,
    ClusterRun,
    HierarchicalResult,
    fit_pca,
    hierarchical_kmeans,
    hierarchical_kmeans_grouped,
)
from deepercluster.cluster.preprocess import PCAWhitening
from deepercluster.cluster.store import FeatureStore
from deepercluster.config import RunConfig
from deepercluster.engine.outofcore import block_rows, clustering_device, whiten_to_store
from deepercluster.engine.stages import ClusteringStage, SafePoint
from deepercluster.log import get_logger

if TYPE_CHECKING:
    from deepercluster.engine.clustering import Clustering

log = get_logger("cluster")

# (ranks of each super-cluster's clustering group, the matching process groups)
Level2Groups = tuple[list[list[int]], list[Any]]


@dataclass(frozen=True)
class RoundResult:
    """What :func:`cluster_features` computed (labels over this round's readable images).

    Attributes:
        result: the hierarchical k-means result, gathered over all ranks.
        pca: the whitening.
        pca_dim: its output dimension d.
        t_pca, t_kmeans: seconds spent in each stage in this call.
    """

    result: HierarchicalResult
    pca: PCAWhitening
    pca_dim: int
    t_pca: float
    t_kmeans: float


@dataclass(frozen=True)
class Features:
    """This rank's features for one round, as extracted into its store.

    Attributes:
        store: (n_r, D) features of this rank's shard (unreadable rows are zero).
        valid_local: (n_r,) bool, the readable rows of the shard.
        local_ids: (n_valid_r,) collection ids of the readable rows (contiguous shards, in
            rank order).
        valid: (N,) bool, readable images of the whole collection (same on every rank).
    """

    store: FeatureStore
    valid_local: np.ndarray
    local_ids: np.ndarray
    valid: np.ndarray


def cluster_features(
    feats: Features,
    cfg: RunConfig,
    *,
    epoch: int,
    previous: Clustering | None,
    level2_groups: Level2Groups | None,
    stage: ClusteringStage,
    safe_point: SafePoint | None,
    progress: bool,
    device: torch.device | None = None,
) -> RoundResult:
    """PCA-whiten and cluster the readable images' features, this rank holding some of them.

    The PCA and each finished k-means run (except in clustering groups) are saved in
    ``stage`` and reloaded rather than recomputed. With ``cluster.feature_store = "disk"``
    the features are streamed from the stores in blocks (:mod:`~deepercluster.engine.outofcore`).
    In memory, PCA and k-means run on ``device`` (the training device) when the features fit
    there (:func:`~deepercluster.engine.outofcore.clustering_device`), else on the CPU.
    """
    c = cfg.cluster
    n_valid = int(feats.valid.sum())
    many = distributed.world_size() > 1
    block = block_rows(c, feats.store.dim)
    tic = time.perf_counter()
    pca_dim = min(c.pca_dim, feats.store.dim, n_valid - 1)
    if pca_dim < c.pca_dim:
        log.warning(
            "cluster.pca_dim=%d is more than the data supports (feature dim %d, %d images); "
            "using %d",
            c.pca_dim,
            feats.store.dim,
            n_valid,
            pca_dim,
        )
    x = None
    if c.feature_store == "disk":
        raw = Blocks(feats.store, members=np.flatnonzero(feats.valid_local), block_rows=block)
    else:
        rows = feats.store.to_array()
        rows = rows if feats.valid_local.all() else rows[feats.valid_local]
        on = clustering_device(
            c, device or torch.device("cpu"), rows=len(rows), dim=feats.store.dim
        )
        x = torch.from_numpy(rows).to(on)
        del rows
        raw = Blocks(x)
    pca = stage.load_pca()
    if pca is None:
        sample = c.pca_sample or None
        pca = fit_pca(raw, dim=pca_dim, power=c.whiten_power, sample=sample, seed=cfg.train.seed)
        if many:  # eigh may round differently on different machines: rank 0's for all.
            pca = distributed.broadcast_object(pca)
        stage.save_pca(pca)
        if safe_point is not None:
            safe_point("pca", "the PCA of the clustering")
    if x is not None:
        reduced = Blocks(pca.apply_tensor(x))
        del x, raw
    else:
        source = stage.reduced(rows=len(feats.local_ids), dim=pca.dim, chunk_rows=block)
        whiten_to_store(feats.store, feats.valid_local, pca, source)
        reduced = Blocks(source, block_rows=block)
    t_pca = time.perf_counter() - tic

    tic = time.perf_counter()
    warm = None
    if c.warm_start and previous is not None and previous.result is not None:
        warm = _warm_start(
            reduced, feats.local_ids, previous, k=c.k, m=c.super_clusters, seed=epoch, dim=pca.dim
        )
    seed = cfg.train.seed * 100_003 + epoch
    if many and level2_groups is not None:
        local = hierarchical_kmeans_grouped(
            reduced,
            k=c.k,
            m=c.super_clusters,
            groups=level2_groups[0],
            process_groups=level2_groups[1],
            niter=c.niter,
            seed=seed,
            init=warm,
            init_method=c.init,
            level1_sample=c.level1_sample,
        )
    else:
        with tqdm(
            total=c.super_clusters + 1, desc="k-means", unit="run", disable=not progress or many
        ) as bar:
            local = _hierarchy(
                reduced,
                cfg,
                seed=seed,
                init=warm,
                stage=stage,
                safe_point=safe_point,
                on_level_done=lambda done, total: bar.update(done - bar.n),
            )
    result = local
    if many:
        result = dataclasses.replace(
            local,
            super_assignments=distributed.all_gather_cat_np(local.super_assignments),
            sub_assignments=distributed.all_gather_cat_np(local.sub_assignments),
        )
    t_kmeans = time.perf_counter() - tic

    return RoundResult(result, pca, pca_dim, t_pca, t_kmeans)


def _hierarchy(
    rows: Blocks,
    cfg: RunConfig,
    *,
    seed: int,
    init: HierarchicalResult | None,
    stage: ClusteringStage,
    safe_point: SafePoint | None,
    on_level_done: Callable[[int, int], None],
) -> HierarchicalResult:
    """The two-level k-means over all ranks, each finished run saved in (or read from) ``stage``.

    Args:
        rows: this rank's (n, d) whitened features, in memory or streamed from their store.
    """
    c = cfg.cluster
    # Distributed k-means is collective: a saved run is used only if every rank has it.
    agree = distributed.all_ranks_ok if distributed.world_size() > 1 else bool

    def saved(run: ClusterRun) -> ClusterRun:
        return stage.cached_runs(run, safe_point, agree=agree)

    return hierarchical_kmeans(
        rows,
        k=c.k,
        m=c.super_clusters,
        niter=c.niter,
        seed=seed,
        init=init,
        init_method=c.init,
        level1_sample=c.level1_sample,
        on_level_done=on_level_done,
        wrap_run=saved,
    )


def _warm_start(
    blocks: Blocks,
    local_ids: np.ndarray,
    previous: Clustering,
    *,
    k: int,
    m: int,
    seed: int,
    dim: int,
) -> HierarchicalResult:
    """Initial centroids from the previous round's clusters, expressed in this round's space.

    PCA is refitted every round, so the previous centroids live in other coordinates; the means
    of the previous clusters' members under the new features are the right starting point
    (sums and counts are all-reduced, so every rank gets the same centroids). A cluster none of
    whose members is readable now starts from a random unit vector.

    Args:
        blocks: this round's whitened features of this rank's readable images, in order.
        local_ids: (n_local,) their collection indices.
        previous: the last round's clustering (labels by collection index).
        k, m: sub-clusters in all and super-clusters.
        seed: for the random fallback (the same on every rank).
        dim: d.
    """
    rng = np.random.default_rng(seed)
    per_super = k // m
    super_prev = previous.super_clusters[local_ids]
    sub_prev = previous.sub_clusters[local_ids]
    known = previous.valid[local_ids]

    def means(groups: np.ndarray, n_groups: int) -> np.ndarray:
        sums = np.zeros((n_groups, dim))
        for pos, rows in blocks:
            x = rows.cpu().numpy()
            g, kn = groups[pos : pos + len(x)], known[pos : pos + len(x)]
            np.add.at(sums, g[kn], x[kn])
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
