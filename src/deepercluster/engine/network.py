"""The trained parts of a run (backbone, heads, optimizer) and the checkpoint that holds them.

Built once by the driver (:func:`build_network`) and saved by one collective call
(:func:`save_training_checkpoint`), so the recipe in ``engine/fit.py`` names each step and
hides neither.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from deepercluster import distributed
from deepercluster.config import ClusterConfig, ModelConfig, TrainConfig
from deepercluster.data import SkipLog
from deepercluster.distributed import DistEnv
from deepercluster.engine.checkpoint import (
    TrainingState,
    arrays_to_tensors,
    rng_state,
    save_checkpoint,
)
from deepercluster.engine.clustering import Clustering
from deepercluster.engine.epoch import seeded_generator
from deepercluster.engine.layout import (
    TrainingLayout,
    build_layout,
    full_heads_state,
    sync_gradients,
)
from deepercluster.engine.preemption import SafePoints
from deepercluster.engine.schedules import lr_schedule
from deepercluster.engine.train import EpochStats, reduce_stats
from deepercluster.models import (
    Backbone,
    HierarchicalHeads,
    build_backbone,
    convert_sync_batchnorm,
)

GradSync = Callable[[int, int], None]
"""``sync(n_local, n_step)``: reduce a step's gradients over the ranks that share them."""


@dataclass(frozen=True)
class Network:
    """What training updates, and how the processes share it.

    Attributes:
        backbone: the trunk, (B, 3, H, W) -> (B, D) pre-activation features.
        heads: the super-class head and this rank's sub-heads.
        optimizer: SGD over both (frozen Sobel weights excluded).
        layout: replicated or grouped heads (``engine/layout.py``).
        grad_sync: the gradient reduction of a step, None in one process.
    """

    backbone: Backbone
    heads: HierarchicalHeads
    optimizer: torch.optim.Optimizer
    layout: TrainingLayout
    grad_sync: GradSync | None


@dataclass(frozen=True)
class Schedule:
    """How an epoch splits into steps, and the learning rate of every step.

    Attributes:
        plan_size: images in this rank's sampling plan per epoch (E, or E/S when grouped).
        plan_batch: plan positions one step covers (batch per process x processes sharing
            the plan).
        iters_per_epoch: steps per epoch.
        lrs: (epochs x iters_per_epoch,) learning rate of every step.
    """

    plan_size: int
    plan_batch: int
    iters_per_epoch: int
    lrs: np.ndarray

    def epoch_lrs(self, epoch: int, start_step: int, n_steps: int) -> np.ndarray:
        """(n_steps,) rates from step ``start_step`` of ``epoch`` (the last rate repeats)."""
        first = min(epoch * self.iters_per_epoch + start_step, len(self.lrs) - 1)
        lrs = self.lrs[first : first + n_steps]
        return np.pad(lrs, (0, n_steps - len(lrs)), mode="edge")


def build_network(
    model: ModelConfig,
    cluster: ClusterConfig,
    train: TrainConfig,
    *,
    resolution: int,
    env: DistEnv,
) -> Network:
    """Build the trunk, the heads of this rank's layout and their optimizer, on ``env.device``.

    The weights are drawn from ``train.seed`` identically on every rank; afterwards the global
    RNG is re-seeded per rank, so that dropout masks differ between ranks.
    """
    backbone = build_backbone(model.arch, sobel=model.sobel, resolution=resolution).to(env.device)
    if train.channels_last:  # inputs need no change: the first conv's output follows
        backbone = backbone.to(memory_format=torch.channels_last)
    layout = build_layout(
        env,
        layout=train.layout,
        n_super=cluster.n_super_classes,
        n_sub=cluster.sub_per_super,
        dim=backbone.feature_dim,
        n_super_clusters=cluster.super_clusters,
    )
    heads = HierarchicalHeads(
        backbone.feature_dim, cluster.n_super_classes, cluster.sub_per_super, owned=layout.owned()
    ).to(env.device)
    heads.reset_parameters(seeded_generator(train.seed, -1))
    if env.world_size > 1:
        # Each process sees a slice of the batch: batch norm must see all of it, on CPU too.
        backbone = cast(Backbone, convert_sync_batchnorm(backbone))
    torch.manual_seed(train.seed * 1_000_003 + env.rank)
    # Frozen Sobel weights are not parameters, so the optimizer never touches them.
    optimizer = torch.optim.SGD(
        [p for p in [*backbone.parameters(), *heads.parameters()] if p.requires_grad],
        lr=train.lr,
        momentum=train.momentum,
        weight_decay=train.weight_decay,
    )
    grad_sync = (
        functools.partial(
            sync_gradients,
            layout,
            [*backbone.parameters(), *heads.super_head.parameters()],
            [heads.sub_weight, heads.sub_bias],
        )
        if env.world_size > 1
        else None
    )
    return Network(backbone, heads, optimizer, layout, grad_sync)


def build_schedule(
    train: TrainConfig, *, epoch_size: int, n_super_classes: int, layout: TrainingLayout
) -> Schedule:
    """Steps per epoch and the learning rate of each, for this rank's layout."""
    # Grouped: each training group draws its own super-class's plan of E/S images.
    plan_size = math.ceil(epoch_size / n_super_classes) if layout.plan.grouped else epoch_size
    # train.batch_size is per process (the paper: 48 per GPU); a step covers
    # batch_size x share_size positions of this rank's plan (all ranks step together).
    plan_batch = train.batch_size * layout.share[1]
    iters = math.ceil(plan_size / plan_batch)
    lrs = lr_schedule(
        base_lr=train.lr,
        epochs=train.epochs,
        iters_per_epoch=iters,
        kind=train.schedule,
        warmup_epochs=train.warmup_epochs,
        step_epochs=train.step_epochs,
    )
    return Schedule(plan_size, plan_batch, iters, lrs)


def save_training_checkpoint(
    path: Path,
    net: Network,
    *,
    state: TrainingState,
    stats: EpochStats | None,
    clustering: Clustering | None,
    skip_log: SkipLog,
    n_images: int,
    config: dict[str, Any],
) -> None:
    """Save everything a resume needs; rank 0 writes (a collective: every rank calls it).

    Also merges every rank's unreadable images into ``skip_log`` and rewrites
    ``skipped.csv`` beside the checkpoint, so the list on disk matches what was saved.

    Args:
        path: the checkpoint file (written atomically).
        net: the network, heads and optimizer (sub-heads are gathered to rank 0).
        state: where the run stands.
        stats: the epoch's sums so far (None at an epoch boundary).
        clustering: the current targets (None before the first clustering).
        skip_log: unreadable images found so far on this rank.
        n_images: size of the collection (a resume checks it).
        config: the resolved configuration, as a plain dict.
    """
    rngs = distributed.all_gather_object(rng_state())
    total = reduce_stats(stats) if stats is not None else None
    full = full_heads_state(net.heads, net.optimizer, net.layout)
    for entries in distributed.all_gather_object(skip_log.entries):
        for image, reason in entries:
            skip_log.record(image, reason)
    if full is None:  # not rank 0
        return
    save_checkpoint(
        path,
        {
            "model": net.backbone.state_dict(),
            "heads": full[0],
            "optimizer": full[1],
            "layout": {"layout": net.layout.plan.layout, "group_size": net.layout.share[1]},
            "rng": rngs,
            "state": asdict(state),
            "stats": asdict(total) if total is not None else {},
            "clustering": arrays_to_tensors(clustering.to_dict()) if clustering else None,
            "skipped": [list(e) for e in skip_log.entries],
            "n_images": n_images,
            "config": config,
        },
        keep_previous=True,
    )
    skip_log.write_csv(path.parent / "skipped.csv")


class StepCheckpoints:
    """After each training step: a checkpoint every ``every`` steps, then the stop check.

    Mid-epoch checkpoints let a killed run lose at most ``every`` steps; a stop signal saves
    here too. The last step of an epoch saves nothing: the epoch's own checkpoint follows.

    Args:
        here: where this call of the epoch started (epoch, first step, plan position).
        schedule: steps per epoch and positions per step.
        every: ``train.checkpoint_every`` (0 = only at epoch ends).
        save: ``save(state=..., stats=...)`` writes a checkpoint (a collective).
        safe_point: the run's safe points.
    """

    def __init__(
        self,
        here: TrainingState,
        schedule: Schedule,
        *,
        every: int,
        save: Callable[..., None],
        safe_point: SafePoints,
    ) -> None:
        self.here, self.schedule, self.every = here, schedule, every
        self.save, self.safe_point = save, safe_point

    def __call__(self, done: int, stats: EpochStats) -> None:
        """``done`` steps of this call finished; ``stats`` are the epoch's sums so far."""
        here, iters = self.here, self.schedule.iters_per_epoch
        it = here.iteration + done
        mid = TrainingState(
            here.epoch, it, here.clustered_epoch, here.position + done * self.schedule.plan_batch
        )
        saved = bool(self.every and it % self.every == 0 and it < iters)
        if saved:
            self.save(state=mid, stats=stats)
        self.safe_point(
            "train",
            f"epoch {here.epoch + 1}, iteration {it}",
            save=None if saved else functools.partial(self.save, state=mid, stats=stats),
            check_stop=it < iters,
        )
