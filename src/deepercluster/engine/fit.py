"""The DeeperCluster recipe, top to bottom.

Caron, Bojanowski, Mairal, Joulin, "Unsupervised Pre-Training of Image Features on Non-Curated
Data", ICCV 2019 (https://arxiv.org/abs/1905.01278). Every ``cluster.reassign`` epochs: extract
features of all images, PCA-whiten them, cluster them hierarchically (m super-clusters, k/m
sub-clusters in each) and re-initialise the heads; every epoch: draw images uniformly over the
sub-clusters, rotate each by a random multiple of 90 degrees, and train the network to predict
(rotation, super-cluster) and the sub-cluster. RotNet (k = m = 1) and DeepCluster (no rotation,
m = 1) are the same loop with other settings.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from deepercluster import distributed
from deepercluster.config import RunConfig
from deepercluster.data import (
    Collection,
    SkipLog,
    TrainTransform,
    open_collection,
)
from deepercluster.distributed import DistEnv
from deepercluster.engine.checkpoint import (
    CHECKPOINT_NAME,
    TrainingState,
    arrays_to_tensors,
    rng_state,
    save_backbone,
    save_checkpoint,
)
from deepercluster.engine.clustering import Clustering, recluster, trivial_clustering
from deepercluster.engine.epoch import epoch_loader, seeded_generator
from deepercluster.engine.layout import (
    build_layout,
    full_heads_state,
    sync_gradients,
)
from deepercluster.engine.preemption import FaultPoints, StopSignal
from deepercluster.engine.resume import resume_from_checkpoint
from deepercluster.engine.schedules import lr_schedule
from deepercluster.engine.stages import clear_stage
from deepercluster.engine.train import (
    EpochStats,
    Targets,
    reduce_stats,
    reset_heads,
    steps_left,
    train_one_epoch,
)
from deepercluster.features import native_bf16
from deepercluster.log import MetricsWriter, format_record, get_logger, setup_logging
from deepercluster.models import (
    Backbone,
    HierarchicalHeads,
    build_backbone,
    convert_sync_batchnorm,
)

log = get_logger("fit")
_INFO, _WARNING = logging.INFO, logging.WARNING


@dataclass(frozen=True)
class FitResult:
    """What a finished (or resumed-and-finished) run leaves behind.

    Attributes:
        out_dir: the run folder (checkpoint.pth, backbone.pth, metrics.*, skipped.csv, tb/).
        backbone: the trained network (on the training device, eval mode).
        clustering: the last targets (labels by image, -1 for unreadable images).
        history: one metrics record per epoch trained in this call.
        n_skipped: unreadable images over the whole run.
    """

    out_dir: Path
    backbone: Backbone
    clustering: Clustering
    history: list[dict[str, Any]]
    n_skipped: int


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without it is an error with the fix."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device=cuda but no CUDA device is visible; use train.device=cpu")
    return torch.device(name)


def fit(
    cfg: RunConfig,
    *,
    collection: Collection | None = None,
    progress: bool = True,
    env: DistEnv | None = None,
) -> FitResult:
    """Pre-train a convnet with DeeperCluster; resume if ``cfg.out`` holds a checkpoint.

    Args:
        cfg: the resolved configuration.
        collection: images to train on; by default opened from ``cfg.data.path``.
        progress: show progress bars on the console (rank 0 only).
        env: this process's place in a distributed job (:func:`distributed.init_from_env`);
            None joins the process group the caller already set up, if any, else runs in a
            single process on ``cfg.train.device``.

    Returns:
        A :class:`FitResult`.

    Raises:
        Preempted: SIGTERM or SIGUSR1 arrived; the run saved its progress at the next safe
            point (training step, extraction chunk, PCA, k-means run) and stopped. Calling
            ``fit`` again with the same settings continues from there.
    """
    with StopSignal() as stop:
        return _fit(cfg, collection=collection, progress=progress, env=env, stop=stop)


def _fit(
    cfg: RunConfig,
    *,
    collection: Collection | None,
    progress: bool,
    env: DistEnv | None,
    stop: StopSignal,
) -> FitResult:
    # ============ setting up the run ============
    # Inside a process group joined by the caller, take part in it rather than train apart.
    env = env or distributed.current_env(resolve_device(cfg.train.device))
    out_dir = Path(cfg.out)
    setup_logging(out_dir if env.is_main else None, level=_INFO if env.is_main else _WARNING)
    progress = progress and env.is_main
    device = env.device
    # torchrun sets OMP_NUM_THREADS=1 per process; CPU stages (k-means, PCA) would then use one
    # core per process on a GPU node: share the machine's cores among its processes instead.
    threads = cfg.train.threads or (
        max(1, (os.cpu_count() or 1) // env.local_world_size) if env.world_size > 1 else 0
    )
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(cfg.train.seed)

    # ============ preparing data ============
    if collection is None:
        collection = open_collection(
            cfg.data.path, max_pixels=cfg.data.max_pixels, path_column=cfg.data.path_column
        )
    n_images = len(collection)
    if cfg.cluster.k > n_images:
        raise ValueError(
            f"cluster.k ({cfg.cluster.k}) is larger than the number of images ({n_images}); "
            f"lower cluster.k (a few images per cluster at least, e.g. "
            f"{max(1, n_images // 10 // cfg.cluster.super_clusters) * cfg.cluster.super_clusters})"
        )
    epoch_size = cfg.train.epoch_size or n_images
    train_transform = TrainTransform(
        cfg.data.resolution, scale=(cfg.data.crop_scale_min, 1.0), hflip=cfg.data.hflip
    )
    skip_log = SkipLog()
    faults = FaultPoints(out_dir, stop, env.rank)

    def safe_point(stage: str, what: str) -> None:
        # Work up to here is saved: a test may crash us here, a stop signal ends the run here.
        faults.reached(stage)
        stop.check(what)

    # ============ building the network and heads ============
    backbone = build_backbone(
        cfg.model.arch, sobel=cfg.model.sobel, resolution=cfg.data.resolution
    ).to(device)
    if cfg.train.channels_last:  # inputs need no change: the first conv's output follows
        backbone = backbone.to(memory_format=torch.channels_last)
    layout = build_layout(
        env,
        layout=cfg.train.layout,
        n_super=cfg.cluster.n_super_classes,
        n_sub=cfg.cluster.sub_per_super,
        dim=backbone.feature_dim,
        n_super_clusters=cfg.cluster.super_clusters,
    )
    level2_groups = (
        (layout.plan.clustering_groups(), list(layout.clustering_groups))
        if layout.clustering_groups
        else None
    )
    heads = HierarchicalHeads(
        backbone.feature_dim,
        cfg.cluster.n_super_classes,
        cfg.cluster.sub_per_super,
        owned=layout.owned(),
    ).to(device)
    # Grouped: each training group draws its own super-class's plan of E/S images.
    plan_size = (
        math.ceil(epoch_size / cfg.cluster.n_super_classes) if layout.plan.grouped else epoch_size
    )
    share_size = layout.share[1]
    # train.batch_size is per process (the paper: 48 per GPU); a step covers
    # batch_size x share_size positions of this rank's plan (all ranks step together).
    plan_batch = cfg.train.batch_size * share_size
    iters_per_epoch = math.ceil(plan_size / plan_batch)
    heads.reset_parameters(seeded_generator(cfg.train.seed, -1))
    if env.world_size > 1:
        # Each process sees a slice of the batch: batch norm must see all of it, on CPU too.
        backbone = cast(Backbone, convert_sync_batchnorm(backbone))
    # Weights were drawn identically on every rank; dropout masks must not be.
    torch.manual_seed(cfg.train.seed * 1_000_003 + env.rank)
    # Frozen Sobel weights are not parameters, so the optimizer never touches them.
    optimizer = torch.optim.SGD(
        [p for p in [*backbone.parameters(), *heads.parameters()] if p.requires_grad],
        lr=cfg.train.lr,
        momentum=cfg.train.momentum,
        weight_decay=cfg.train.weight_decay,
    )
    grad_sync = functools.partial(
        sync_gradients,
        layout,
        [*backbone.parameters(), *heads.super_head.parameters()],
        [heads.sub_weight, heads.sub_bias],
    )
    lrs = lr_schedule(
        base_lr=cfg.train.lr,
        epochs=cfg.train.epochs,
        iters_per_epoch=iters_per_epoch,
        kind=cfg.train.schedule,
        warmup_epochs=cfg.train.warmup_epochs,
        step_epochs=cfg.train.step_epochs,
    )
    log.info(
        "%s | %s (sobel=%s, feature dim %d) | %d super-classes x %d sub-clusters | %s",
        _describe(collection),
        cfg.model.arch,
        cfg.model.sobel,
        backbone.feature_dim,
        cfg.cluster.n_super_classes,
        cfg.cluster.sub_per_super,
        device,
    )
    if cfg.train.precision == "bf16" and not native_bf16(device):
        log.warning(
            "train.precision=bf16 on a %s without native bf16: autocast emulates it, ~10x "
            "slower than fp32 on an AVX2-only CPU; use train.precision=fp32 here",
            device,
        )
    if env.world_size > 1:
        log.info(
            "%d processes (%s), %s layout: batch %d per process = %d per step, batch norm "
            "synchronised over all processes",
            env.world_size,
            env.backend,
            layout.plan.layout,
            cfg.train.batch_size,
            cfg.train.batch_size * env.world_size,
        )

    # ============ resuming from a checkpoint ============
    ckpt_path = out_dir / CHECKPOINT_NAME
    resumed = resume_from_checkpoint(
        ckpt_path,
        cfg,
        env,
        backbone=backbone,
        heads=heads,
        optimizer=optimizer,
        layout=layout,
        n_images=n_images,
        skip_log=skip_log,
    )
    state = resumed.state if resumed else TrainingState(epoch=0, iteration=0, clustered_epoch=-1)
    clustering: Clustering | None = resumed.clustering if resumed else None
    stats: EpochStats | None = resumed.stats if resumed else None
    if env.is_main:
        (out_dir / "config.json").write_text(cfg.to_json() + "\n")

    def checkpoint(st: TrainingState, epoch_stats: EpochStats | None) -> None:
        # Every rank calls this at the same point: the gathers below are collectives.
        rngs = distributed.all_gather_object(rng_state())
        total = reduce_stats(epoch_stats) if epoch_stats is not None else None
        full = full_heads_state(heads, optimizer, layout)
        for entries in distributed.all_gather_object(skip_log.entries):
            for path, reason in entries:
                skip_log.record(path, reason)
        if full is None:  # not rank 0
            return
        save_checkpoint(
            ckpt_path,
            {
                "model": backbone.state_dict(),
                "heads": full[0],
                "optimizer": full[1],
                "layout": {"layout": layout.plan.layout, "group_size": share_size},
                "rng": rngs,
                "state": asdict(st),
                "stats": asdict(total) if total is not None else {},
                "clustering": arrays_to_tensors(clustering.to_dict()) if clustering else None,
                "skipped": [list(e) for e in skip_log.entries],
                "n_images": n_images,
                "config": cfg.to_dict(),
            },
        )
        skip_log.write_csv(out_dir / "skipped.csv")

    history: list[dict[str, Any]] = []
    with MetricsWriter(out_dir, enabled=env.is_main) as writer:
        for epoch in range(state.epoch, cfg.train.epochs):
            # ============ clustering: new targets every `reassign` epochs ============
            if not cfg.cluster.needs_clustering:
                clustering = clustering or trivial_clustering(n_images)
            elif clustering is None or (
                epoch % cfg.cluster.reassign == 0 and state.clustered_epoch != epoch
            ):
                clustering, unreadable = recluster(
                    backbone,
                    backbone.feature_dim,
                    collection,
                    cfg,
                    epoch=epoch,
                    device=device,
                    previous=clustering,
                    level2_groups=level2_groups,
                    progress=progress,
                    work_dir=out_dir,
                    safe_point=safe_point,
                )
                for index, reason in unreadable:
                    skip_log.record(collection.path(index), reason)
                reset_heads(
                    heads,
                    optimizer,
                    seeded_generator(cfg.train.seed, epoch),
                    keep_super=cfg.cluster.super_clusters == 1,
                )
                state = TrainingState(epoch=epoch, iteration=0, clustered_epoch=epoch)
                stats = None
                checkpoint(state, None)  # a restart never redoes a finished clustering
                distributed.barrier()  # the targets are saved: the stage files can go
                clear_stage(out_dir, env.rank)

            # ============ training one epoch ============
            start = state.position if state.epoch == epoch else 0
            start_it = start // plan_batch
            loader = epoch_loader(
                collection,
                clustering,
                cfg,
                layout=layout,
                epoch=epoch,
                start=start,
                plan_size=plan_size,
                transform=train_transform,
            )
            targets = Targets(
                super_clusters=torch.from_numpy(clustering.super_clusters),
                sub_clusters=torch.from_numpy(clustering.sub_clusters),
                n_super_clusters=cfg.cluster.super_clusters,
                rotation=cfg.cluster.rotation,
            )
            n_steps = steps_left(start, plan_size, global_batch=plan_batch)
            first_lr = min(epoch * iters_per_epoch + start_it, len(lrs) - 1)
            epoch_lrs = lrs[first_lr : first_lr + n_steps]
            epoch_lrs = np.pad(epoch_lrs, (0, n_steps - len(epoch_lrs)), mode="edge")
            here = TrainingState(epoch, start_it, state.clustered_epoch, start)

            def on_step(done: int, st: EpochStats, here: TrainingState = here) -> None:
                # Mid-epoch checkpoints let a killed run lose at most `checkpoint_every` steps.
                # A stop signal saves here too (the last step's state is saved at epoch end).
                it = here.iteration + done
                every = cfg.train.checkpoint_every
                mid = TrainingState(
                    here.epoch, it, here.clustered_epoch, here.position + done * plan_batch
                )
                saved = bool(every and it % every == 0 and it < iters_per_epoch)
                if saved:
                    checkpoint(mid, st)
                faults.reached("train")
                if it < iters_per_epoch and stop.agreed():
                    if not saved:
                        checkpoint(mid, st)
                    stop.check(f"epoch {here.epoch}, iteration {it}")

            stats = train_one_epoch(
                backbone,
                heads,
                loader,
                optimizer,
                targets=targets,
                lrs=epoch_lrs,
                device=device,
                precision=cfg.train.precision,
                stats=stats if state.epoch == epoch else None,
                on_step=on_step,
                on_skip=lambda i, reason: skip_log.record(collection.path(i), reason),
                image_shape=(3, cfg.data.resolution, cfg.data.resolution),
                sync=grad_sync if env.world_size > 1 else None,
                progress=progress,
            )
            stats = reduce_stats(stats)
            if stats.images == 0:
                raise ValueError(
                    f"epoch {epoch}: none of the {epoch_size} sampled images could be read "
                    f"(see {out_dir / 'skipped.csv'}); check data.path points at image files"
                )

            # ============ logging and checkpointing ============
            record: dict[str, Any] = {
                "epoch": epoch,
                "lr": float(lrs[(epoch + 1) * iters_per_epoch - 1]),
            }
            record.update(stats.summary())
            # Timings of the clustering stage only on the epoch that ran it; the clusters'
            # own numbers describe the current targets and are repeated every epoch.
            reclustered = clustering.metrics.get("cluster/epoch") == epoch
            record.update(
                {
                    k: v
                    for k, v in clustering.metrics.items()
                    if reclustered or k.startswith("cluster/")
                }
            )
            record["data/skipped"] = len(skip_log)
            writer.write(record, step=epoch)
            history.append(record)
            log.info(
                "epoch %d/%d %s",
                epoch + 1,
                cfg.train.epochs,
                format_record(
                    record,
                    [
                        "train/loss",
                        "train/super_acc",
                        "train/sub_acc",
                        "cluster/objective",
                        "cluster/nmi_previous",
                        "train/images_per_s",
                    ],
                ),
            )
            state = TrainingState(epoch + 1, 0, state.clustered_epoch)
            stats = None
            checkpoint(state, None)
            if epoch + 1 < cfg.train.epochs:
                stop.check(f"the end of epoch {epoch}")

    # ============ finishing ============
    if env.is_main:
        save_backbone(out_dir / "backbone.pth", backbone, cfg)
        skip_log.write_csv(out_dir / "skipped.csv")
        if len(skip_log):
            log.warning("%s", skip_log.summary())
        if history:  # a re-run of a finished run trains nothing and keeps the old summary
            (out_dir / "summary.json").write_text(
                json.dumps(history[-1], indent=2, sort_keys=True, default=float)
            )
    assert clustering is not None
    backbone.eval()
    return FitResult(out_dir, backbone, clustering, history, len(skip_log))


def _describe(collection: Collection) -> str:
    describe = getattr(collection, "describe", None)
    return describe() if callable(describe) else f"{len(collection):,} images"
