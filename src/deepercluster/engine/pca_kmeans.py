"""PCA whitening and hierarchical k-means of one clustering round, saved piece by piece.

The PCA and every finished k-means run of the hierarchy are written to the round's
:class:`~deepercluster.engine.stages.ClusteringStage` as they complete and reloaded, not
recomputed, when the round is resumed (in one process and with all ranks clustering
together; the grouped layout's per-super-cluster clustering groups redo their level 2).
With ``cluster.feature_store = "disk"`` the features are streamed from their stores in
blocks (:mod:`~deepercluster.engine.outofcore`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm import tqdm

from deepercluster import distributed
from deepercluster.cluster import (
    HierarchicalResult,
    balance_super_clusters,
    check_features,
    faiss_threads,
    fit_pca,
    fit_pca_distributed,
    hierarchical_kmeans_grouped,
    lloyd,
)
from deepercluster.cluster.chunked import hierarchical_kmeans_chunked, kmeans_chunked, row_blocks

# The pieces hierarchical_kmeans_distributed is made of, so that each run can be saved.
from deepercluster.cluster.distributed_kmeans import (
    balance_distributed,
    check_k_fits,
    kmeans_distributed,
    level1_sample_distributed,
    locate_shards,
    one_cluster_distributed,
)
from deepercluster.cluster.hierarchical import one_cluster, two_levels
from deepercluster.cluster.level1_sample import draw_level1_sample, nearest
from deepercluster.cluster.preprocess import PCAWhitening
from deepercluster.cluster.store import FeatureStore
from deepercluster.config import RunConfig
from deepercluster.engine.outofcore import (
    block_rows,
    fit_pca_store,
    level2_runs_at_once,
    whiten_to_store,
)
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
) -> RoundResult:
    """PCA-whiten and cluster the readable images' features, this rank holding some of them.

    The PCA and each finished k-means run (except in clustering groups) are saved in
    ``stage`` and reloaded rather than recomputed. With ``cluster.feature_store = "disk"``
    the features are streamed from the stores in blocks (:mod:`~deepercluster.engine.outofcore`).
    """
    c = cfg.cluster
    n_valid = int(feats.valid.sum())
    many = distributed.world_size() > 1
    disk = c.feature_store == "disk"
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
    if not disk:
        x = feats.store.to_array()
        x = x if feats.valid_local.all() else x[feats.valid_local]
    sample = c.pca_sample or None
    pca = stage.load_pca()
    if pca is None:
        if x is None:
            pca = fit_pca_store(
                feats.store,
                feats.valid_local,
                dim=pca_dim,
                power=c.whiten_power,
                sample=sample,
                seed=cfg.train.seed,
                block=block,
            )
        elif many:
            pca = fit_pca_distributed(
                x, dim=pca_dim, power=c.whiten_power, sample=sample, seed=cfg.train.seed
            )
        else:
            pca = fit_pca(x, dim=pca_dim, power=c.whiten_power, sample=sample, seed=cfg.train.seed)
        if many:  # eigh may round differently on different machines: rank 0's for all.
            pca = distributed.broadcast_object(pca)
        stage.save_pca(pca)
        if safe_point is not None:
            safe_point("pca", "the PCA of the clustering")
    source: FeatureStore | None = None
    if x is not None:
        reduced = pca.apply(x)
        del x
    else:
        source = stage.reduced(rows=len(feats.local_ids), dim=pca.dim, chunk_rows=block)
        whiten_to_store(feats.store, feats.valid_local, pca, source)
        # Distributed k-means keeps the (n_r, d) whitened shard in memory (1 KB per image
        # at d = 256); the raw features, 16x larger at D = 4096, stay on disk.
        reduced = source.to_array() if many else np.zeros((0, pca.dim), np.float32)
    t_pca = time.perf_counter() - tic

    tic = time.perf_counter()
    warm = None
    if c.warm_start and previous is not None and previous.result is not None:
        blocks = (
            (lambda: row_blocks(source, block))
            if source is not None and not many
            else (lambda: iter([(0, reduced)]))
        )
        warm = _warm_start(
            blocks, feats.local_ids, previous, k=c.k, m=c.super_clusters, seed=epoch, dim=pca.dim
        )
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
                level1_sample=c.level1_sample,
            )
        else:
            with faiss_threads(threads):
                local = _hierarchy_distributed(
                    reduced, cfg, seed=seed, init=warm, stage=stage, safe_point=safe_point
                )
        result = dataclasses.replace(
            local,
            super_assignments=distributed.all_gather_cat_np(local.super_assignments),
            sub_assignments=distributed.all_gather_cat_np(local.sub_assignments),
        )
    else:
        with (
            tqdm(
                total=c.super_clusters + 1, desc="k-means", unit="run", disable=not progress
            ) as bar,
            faiss_threads(threads),
        ):
            result = _hierarchy_one_process(
                reduced if source is None else source,
                cfg,
                seed=seed,
                init=warm,
                block=block,
                workers=level2_runs_at_once(c, threads) if disk else None,
                stage=stage,
                safe_point=safe_point,
                on_level_done=lambda done, total: bar.update(done - bar.n),
            )
    t_kmeans = time.perf_counter() - tic

    return RoundResult(result, pca, pca_dim, t_pca, t_kmeans)


def _hierarchy_distributed(
    x_local: np.ndarray,
    cfg: RunConfig,
    *,
    seed: int,
    init: HierarchicalResult | None,
    stage: ClusteringStage,
    safe_point: SafePoint | None,
) -> HierarchicalResult:
    """:func:`~deepercluster.cluster.hierarchical_kmeans_distributed`, each run saved.

    The same calls as that function (one ``kmeans_distributed`` per level and super-cluster
    over all ranks); a run saved by every rank is reloaded instead of recomputed.

    Args:
        x_local: (n_r, d) this rank's whitened features.
    """
    c = cfg.cluster
    x_local, shards = locate_shards(x_local, None)
    check_k_fits(c.k, shards.n)
    return two_levels(
        n=len(x_local),
        dim=shards.dim,
        k=c.k,
        m=c.super_clusters,
        init=init,
        cluster=stage.cached_runs(
            lambda _run, rows, kk, sd, ini: kmeans_distributed(
                x_local if rows is None else x_local[rows], kk, niter=c.niter, seed=sd, init=ini
            ),
            safe_point,
            agree=distributed.all_ranks_ok,
        ),
        one_cluster=lambda: one_cluster_distributed(x_local, shards, None),
        balance=lambda a, cen, size: balance_distributed(x_local, a, cen, size, shards, None),
        seed=seed,
        sample=level1_sample_distributed(
            x_local, shards, c.level1_sample, c.super_clusters, seed, None
        ),
    )


def _hierarchy_one_process(
    x: np.ndarray | FeatureStore,
    cfg: RunConfig,
    *,
    seed: int,
    init: HierarchicalResult | None,
    block: int,
    stage: ClusteringStage,
    safe_point: SafePoint | None,
    on_level_done: Callable[[int, int], None],
    workers: int | None = None,
) -> HierarchicalResult:
    """The two-level k-means in one process, each finished run saved in (or read from) ``stage``.

    Args:
        x: (n, d) whitened features in memory, or their store (streamed in blocks).
        workers: level-2 runs at once, in threads (None: ``level2_workers``, which the memory
            store's budget counts; ``cluster_features`` passes ``level2_runs_at_once`` for a
            store).
    """
    c = cfg.cluster
    if isinstance(x, FeatureStore):
        store = x
        return hierarchical_kmeans_chunked(
            store,
            k=c.k,
            m=c.super_clusters,
            seed=seed,
            init=init,
            block_rows=block,
            on_level_done=on_level_done,
            level1_sample=c.level1_sample,
            workers=workers,  # side by side (cached_runs and the store are thread-safe)
            cluster=stage.cached_runs(
                lambda _run, members, kk, sd, ini: kmeans_chunked(
                    store, kk, members=members, niter=c.niter, seed=sd, init=ini, block_rows=block
                ),
                safe_point,
            ),
        )
    rows_in_memory = check_features(x)
    return two_levels(
        n=len(rows_in_memory),
        dim=rows_in_memory.shape[1],
        k=c.k,
        m=c.super_clusters,
        init=init,
        # The same calls as hierarchical_kmeans, one saved file per finished run.
        cluster=stage.cached_runs(
            lambda _run, rows, kk, sd, ini: lloyd(
                rows_in_memory if rows is None else rows_in_memory[rows],
                kk,
                niter=c.niter,
                seed=sd,
                init=ini,
            ),
            safe_point,
        ),
        one_cluster=lambda: one_cluster(rows_in_memory),
        balance=lambda a, cen, size: balance_super_clusters(rows_in_memory, a, cen, size),
        seed=seed,
        on_level_done=on_level_done,
        workers=workers,  # level-2 runs side by side (cached_runs is thread-safe)
        sample=draw_level1_sample(
            len(rows_in_memory),
            c.level1_sample,
            c.super_clusters,
            seed,
            lambda cen: nearest(rows_in_memory, cen),
        ),
    )


def _warm_start(
    blocks: Callable[[], Iterator[tuple[int, np.ndarray]]],
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
        blocks: yields (first row, (b, d) rows) over this round's whitened features of this
            rank's readable images, in order (one block when they are in memory).
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
        for pos, x in blocks():
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
