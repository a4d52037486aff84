"""One epoch's data: the sampling plan of this rank's training group, as a DataLoader."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from deepercluster.config import ClusterConfig, DataConfig
from deepercluster.data import (
    Collection,
    TrainTransform,
    TrainView,
    storage_order,
    super_class_epoch_plan,
    uniform_epoch_plan,
)
from deepercluster.engine.clustering import Clustering
from deepercluster.engine.layout import TrainingLayout
from deepercluster.engine.preemption import ignore_stop_signals
from deepercluster.engine.train import rank_positions


def seeded_generator(seed: int, epoch: int) -> torch.Generator:
    """Reproducible head initialisation and loader seeds per (seed, clustering round)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch + 1)


def epoch_loader(
    collection: Collection,
    clustering: Clustering,
    data: DataConfig,
    cluster: ClusterConfig,
    *,
    seed: int,
    batch_size: int,
    layout: TrainingLayout,
    epoch: int,
    start: int,
    plan_size: int,
    transform: TrainTransform,
) -> DataLoader[tuple[torch.Tensor, int, int, str]]:
    """This rank's batches of the epoch's plan, from plan position ``start`` to the end.

    Replicated layout: a plan uniform over all sub-clusters; grouped: the plan of the
    group's super-class. Rank r of a group of W takes the r-th slice of ``batch_size`` of
    every global batch (:func:`~deepercluster.engine.train.rank_positions`).
    """
    if layout.super_class is None:
        plan = uniform_epoch_plan(
            clustering.labels,
            size=plan_size,
            seed=seed,
            epoch=epoch,
            rotation=cluster.rotation,
        )
    else:
        plan = super_class_epoch_plan(
            clustering.super_clusters,
            clustering.sub_clusters,
            clustering.valid,
            super_class=layout.super_class,
            n_super_clusters=cluster.super_clusters,
            rotation=cluster.rotation,
            size=plan_size,
            seed=seed,
            epoch=epoch,
        )
    if data.shard_buffer:
        groups = getattr(collection, "storage_groups", None)
        ids = np.arange(len(collection), dtype=np.int64)
        plan = storage_order(
            plan,
            groups() if callable(groups) else ids // 1024,
            buffer=data.shard_buffer,
            seed=seed,
            epoch=epoch,
        )
    share_rank, share_size = layout.share
    positions = rank_positions(
        start, plan_size, batch_size=batch_size, rank=share_rank, world=share_size
    )
    view = TrainView(collection, transform, plan, seed=seed, epoch=epoch)
    return DataLoader(
        Subset(view, positions.tolist()),
        batch_size=batch_size,
        shuffle=False,
        num_workers=data.workers,
        # A DataLoader draws its worker seed from the global RNG unless given its own
        # generator; that draw would shift dropout masks after a mid-epoch resume.
        generator=seeded_generator(seed, epoch),
        worker_init_fn=ignore_stop_signals,
    )
