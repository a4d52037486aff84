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
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from deepercluster import distributed
from deepercluster.config import RunConfig
from deepercluster.data import Collection, SkipLog, TrainTransform, open_collection
from deepercluster.distributed import DistEnv
from deepercluster.engine.checkpoint import CHECKPOINT_NAME, TrainingState, save_backbone
from deepercluster.engine.claim import claim_run_folder, write_missing_summary
from deepercluster.engine.clustering import Clustering, recluster, trivial_clustering
from deepercluster.engine.epoch import epoch_loader, seeded_generator
from deepercluster.engine.eta import RunClock
from deepercluster.engine.failures import NoReadableImages
from deepercluster.engine.head_start import start_heads
from deepercluster.engine.network import (
    Network,
    StepCheckpoints,
    build_network,
    build_schedule,
    save_training_checkpoint,
)
from deepercluster.engine.preemption import SafePoints, StopSignal
from deepercluster.engine.readable import check_k, none_readable
from deepercluster.engine.resume import resume_from_checkpoint
from deepercluster.engine.stages import clear_stage
from deepercluster.engine.train import (
    EpochStats,
    Targets,
    reduce_stats,
    steps_left,
    train_one_epoch,
)
from deepercluster.features import native_bf16
from deepercluster.log import MetricsWriter, format_record, get_logger
from deepercluster.models import Backbone

log = get_logger("fit")


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
    restart: bool = False,
) -> FitResult:
    """Pre-train a convnet with DeeperCluster; resume if ``cfg.out`` holds a checkpoint.

    Args:
        cfg: the resolved configuration.
        collection: images to train on; by default opened from ``cfg.data.path``.
        progress: show progress bars on the console (rank 0 only).
        env: this process's place in a distributed job (:func:`distributed.init_from_env`);
            None joins the process group the caller already set up, if any, else runs in a
            single process on ``cfg.train.device``.
        restart: archive a run found in ``cfg.out`` (to ``archive/<time>/`` in it) and
            start afresh, instead of resuming it.

    Returns:
        A :class:`FitResult`.

    Raises:
        Preempted: SIGTERM or SIGUSR1 arrived; the run saved its progress at the next safe
            point (training step, extraction chunk, PCA, k-means run) and stopped. Calling
            ``fit`` again with the same settings continues from there.
        RunFolderError: another run holds ``cfg.out``, or it holds a run that cannot be
            continued (the message names the way out).
    """
    # Inside a process group joined by the caller, take part in it rather than train apart.
    env = env or distributed.current_env(resolve_device(cfg.train.device))
    with StopSignal() as stop, claim_run_folder(Path(cfg.out), env, restart=restart):
        return _fit(cfg, collection=collection, progress=progress, env=env, stop=stop)


def _fit(
    cfg: RunConfig,
    *,
    collection: Collection | None,
    progress: bool,
    env: DistEnv,
    stop: StopSignal,
) -> FitResult:
    # ============ setting up the run ============
    out_dir = Path(cfg.out)
    progress = progress and env.is_main
    _set_threads(cfg.train.threads, env)
    torch.manual_seed(cfg.train.seed)
    safe_point = SafePoints(out_dir, stop, env.rank)

    # ============ preparing data ============
    if collection is None:
        collection = open_collection(
            cfg.data.path,
            max_pixels=cfg.data.max_pixels,
            path_column=cfg.data.path_column,
            max_bytes=cfg.data.max_file_bytes,
        )
    n_images = len(collection)
    skip_log = SkipLog()
    # The error when no image reads: the real cause, with skipped.csv written.
    unreadable = functools.partial(
        none_readable, collection, data_path=cfg.data.path, skip_log=skip_log, out_dir=out_dir
    )
    check_k(cfg.cluster, collection, unreadable)
    epoch_size = cfg.train.epoch_size or n_images
    train_transform = TrainTransform(
        cfg.data.resolution, scale=(cfg.data.crop_scale_min, 1.0), hflip=cfg.data.hflip
    )

    # ============ building the network and heads ============
    net = build_network(cfg.model, cfg.cluster, cfg.train, resolution=cfg.data.resolution, env=env)
    backbone, heads, layout = net.backbone, net.heads, net.layout
    schedule = build_schedule(
        cfg.train,
        epoch_size=epoch_size,
        n_super_classes=cfg.cluster.n_super_classes,
        layout=layout,
    )
    level2_groups = (
        (layout.plan.clustering_groups(), list(layout.clustering_groups))
        if layout.clustering_groups
        else None
    )
    _log_setup(cfg, env, net, collection)

    # ============ resuming from a checkpoint ============
    ckpt_path = out_dir / CHECKPOINT_NAME
    resumed = resume_from_checkpoint(
        ckpt_path,
        cfg,
        env,
        backbone=backbone,
        heads=heads,
        optimizer=net.optimizer,
        layout=layout,
        n_images=n_images,
        skip_log=skip_log,
    )
    state = resumed.state if resumed else TrainingState(epoch=0, iteration=0, clustered_epoch=-1)
    clustering: Clustering | None = resumed.clustering if resumed else None
    stats: EpochStats | None = resumed.stats if resumed else None
    if env.is_main:
        (out_dir / "config.json").write_text(cfg.to_json() + "\n")
    save = functools.partial(
        save_training_checkpoint,
        ckpt_path,
        net,
        skip_log=skip_log,
        n_images=n_images,
        config=cfg.to_dict(),
    )

    reassign = cfg.cluster.reassign if cfg.cluster.needs_clustering else 0  # RotNet: never
    clock = RunClock(cfg.train.epochs, schedule.iters_per_epoch, reassign)
    clock.clustered(clustering.metrics if clustering else {})
    history: list[dict[str, Any]] = []
    with MetricsWriter(out_dir, enabled=env.is_main) as writer:
        # state.epoch counts the finished epochs; rows (numbered from 1) past it would repeat.
        writer.keep_epochs(state.epoch)
        for epoch in range(state.epoch, cfg.train.epochs):
            # ============ clustering: new targets every `reassign` epochs ============
            if not cfg.cluster.needs_clustering:
                clustering = clustering or trivial_clustering(n_images)
            elif clustering is None or (
                epoch % cfg.cluster.reassign == 0 and state.clustered_epoch != epoch
            ):
                previous = clustering
                try:
                    clustering, unread = recluster(
                        backbone,
                        backbone.feature_dim,
                        collection,
                        cfg,
                        epoch=epoch,
                        device=env.device,
                        previous=previous,
                        level2_groups=level2_groups,
                        progress=progress,
                        work_dir=out_dir,
                        safe_point=safe_point,
                        heading=f"clustering for epoch {epoch + 1}/{cfg.train.epochs}",
                    )
                except NoReadableImages as exc:
                    raise unreadable(exc.unreadable) from None
                for index, reason in unread:
                    skip_log.record(collection.path(index), reason)
                clock.clustered(clustering.metrics)
                start_heads(
                    heads,
                    net.optimizer,
                    seeded_generator(cfg.train.seed, epoch),
                    cluster=cfg.cluster,
                    clustering=clustering,
                    previous=previous,
                    trained=epoch > 0,
                )
                clustering = clustering.without_head_inputs()  # (k + D) x D floats, used up
                state = TrainingState(epoch=epoch, iteration=0, clustered_epoch=epoch)
                stats = None
                # A restart never redoes a finished clustering.
                save(state=state, stats=None, clustering=clustering)
                distributed.barrier()  # the targets are saved: the stage files can go
                clear_stage(out_dir, env.rank)

            # ============ training one epoch ============
            start = state.position if state.epoch == epoch else 0
            here = TrainingState(epoch, start // schedule.plan_batch, state.clustered_epoch, start)
            loader = epoch_loader(
                collection,
                clustering,
                cfg.data,
                cfg.cluster,
                seed=cfg.train.seed,
                batch_size=cfg.train.batch_size,
                layout=layout,
                epoch=epoch,
                start=start,
                plan_size=schedule.plan_size,
                transform=train_transform,
            )
            n_steps = steps_left(start, schedule.plan_size, global_batch=schedule.plan_batch)
            log.info("training epoch %d/%d: %d steps", epoch + 1, cfg.train.epochs, n_steps)
            clock.start_epoch(epoch, n_steps)
            stats = train_one_epoch(
                backbone,
                heads,
                loader,
                net.optimizer,
                targets=Targets.of(clustering, cfg.cluster),
                lrs=schedule.epoch_lrs(epoch, here.iteration, n_steps),
                device=env.device,
                precision=cfg.train.precision,
                stats=stats if state.epoch == epoch else None,
                on_step=StepCheckpoints(
                    here,
                    schedule,
                    every=cfg.train.checkpoint_every,
                    save=functools.partial(save, clustering=clustering),
                    safe_point=safe_point,
                ),
                on_skip=lambda i, reason: skip_log.record(collection.path(i), reason),
                image_shape=(3, cfg.data.resolution, cfg.data.resolution),
                sync=net.grad_sync,
                progress=progress,
                desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
                eta=clock.left,
            )
            clock.end_epoch(n_steps)
            stats = reduce_stats(stats)
            if stats.images == 0:
                raise unreadable([])  # the epoch's skips are in skip_log already

            # ============ logging and checkpointing ============
            lr = float(schedule.lrs[(epoch + 1) * schedule.iters_per_epoch - 1])
            sums = stats.summary(rotation=cfg.cluster.rotation)
            record = _epoch_record(epoch, lr, sums, clustering, n_skipped=len(skip_log))
            writer.write(record, step=epoch + 1)
            history.append(record)
            log.info("epoch %d/%d %s", epoch + 1, cfg.train.epochs, format_record(record, _SHOWN))
            state = TrainingState(epoch + 1, 0, state.clustered_epoch)
            stats = None
            save(state=state, stats=None, clustering=clustering)
            if epoch + 1 < cfg.train.epochs:
                stop.check(f"the end of epoch {epoch + 1}")

    # ============ finishing ============
    if env.is_main:
        save_backbone(out_dir / "backbone.pth", backbone, cfg)
        skip_log.write_csv(out_dir / "skipped.csv")
        if len(skip_log):
            log.warning("%s", skip_log.summary())
        write_missing_summary(out_dir, history)  # a re-run trains nothing: kept, or rebuilt
    assert clustering is not None
    backbone.eval()
    return FitResult(out_dir, backbone, clustering, history, len(skip_log))


_SHOWN = [
    "train/loss",
    "train/super_acc",
    "train/sub_acc",
    "train/rotation_acc",
    "cluster/objective",
    "cluster/nmi_previous",
    "train/images_per_s",
]
"""The metrics of the console's epoch line (all of them go to metrics.jsonl)."""


def _set_threads(threads: int, env: DistEnv) -> None:
    # torchrun sets OMP_NUM_THREADS=1 per process; CPU stages (k-means, PCA) would then use one
    # core per process on a GPU node: share the machine's cores among its processes instead.
    n = threads or (
        max(1, (os.cpu_count() or 1) // env.local_world_size) if env.world_size > 1 else 0
    )
    if n:
        torch.set_num_threads(n)


def _log_setup(cfg: RunConfig, env: DistEnv, net: Network, collection: Collection) -> None:
    log.info(
        "%s | %s (sobel=%s, feature dim %d) | %d super-classes x %d sub-clusters | %s",
        _describe(collection),
        cfg.model.arch,
        cfg.model.sobel,
        net.backbone.feature_dim,
        cfg.cluster.n_super_classes,
        cfg.cluster.sub_per_super,
        env.device,
    )
    if cfg.train.precision == "bf16" and not native_bf16(env.device):
        log.warning(
            "train.precision=bf16 on a %s without native bf16: autocast emulates it, many "
            "times slower than fp32; use train.precision=fp32 here",
            env.device,
        )
    if env.world_size > 1:
        log.info(
            "%d processes (%s), %s layout: batch %d per process = %d per step, batch norm "
            "synchronised over all processes",
            env.world_size,
            env.backend,
            net.layout.plan.layout,
            cfg.train.batch_size,
            cfg.train.batch_size * env.world_size,
        )


def _epoch_record(
    epoch: int, lr: float, sums: dict[str, float], clustering: Clustering, *, n_skipped: int
) -> dict[str, Any]:
    """One row of metrics.jsonl: the epoch's training means and the current clusters.

    Every file a user reads numbers epochs from 1, as the console does; ``epoch`` (like the
    checkpoint's state) counts from 0.
    """
    record: dict[str, Any] = {"epoch": epoch + 1, "lr": lr}
    record.update(sums)
    # Timings of the clustering stage only on the epoch that ran it; the clusters' own
    # numbers describe the current targets and are repeated every epoch.
    reclustered = clustering.metrics.get("cluster/epoch") == epoch + 1
    record.update(
        {k: v for k, v in clustering.metrics.items() if reclustered or k.startswith("cluster/")}
    )
    record["data/skipped"] = n_skipped
    return record


def _describe(collection: Collection) -> str:
    describe = getattr(collection, "describe", None)
    return describe() if callable(describe) else f"{len(collection):,} images"
