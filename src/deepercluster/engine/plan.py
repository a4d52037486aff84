"""What a run will cost before it starts: RAM, GPU memory, disk and time per stage per rank.

Sizes are exact counts of the arrays each stage holds (features, whitened features,
centroids, assignments, heads, optimizer state, checkpoint); the network's parameters, FLOPs
and activation sizes are measured on PyTorch's ``meta`` device (no memory, no compute).
Times divide FLOPs by throughputs that are stated assumptions (:class:`Assumptions`),
so the numbers are only as good as those; the defaults are measured values of this
project's machines or the usual ones of an A100-class GPU, and every one can be overridden.

The whole configuration is validated on the way, so that an impossible setting (k above
the number of images, a grouped layout that does not divide the processes, heads that do
not fit in GPU memory, a memory store over the memory limit) is reported before launch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from deepercluster.config import RunConfig
from deepercluster.curate.settings import CurateSettings
from deepercluster.engine.group_plan import plan_groups
from deepercluster.engine.outofcore import PER_IMAGE_BYTES, block_rows, extraction_chunk
from deepercluster.models import build_backbone

# Bytes per image of the collection index (PathTable + tar offsets), measured by
# ``scripts/out_of_core.py --index``: 30 for a list file and 41 for tar shards with names of
# 13-22 characters after their shared folder; longer names cost their extra characters.
INDEX_BYTES_PER_IMAGE = 48
# labels, super-clusters, sub-clusters (int64) and the readable flag, for every image.
TARGET_BYTES_PER_IMAGE = 25


@dataclass(frozen=True)
class Assumptions:
    """Throughputs that turn counts into seconds (``plan --calibrate`` measures them).

    Attributes:
        gpu_tflops: effective convnet TFLOPS per process (A100-class GPUs: ~25-60 on
            convnets); used where no stage rate was measured.
        kmeans_gflops: GFLOPS of the k-means distance products per process; used where no
            per-row time was measured.
        pca_gflops: float64 GFLOPS of the covariance accumulation per process (CPU).
        decode_per_worker: images/s one data-loading worker decodes and augments; used where
            no stage rate was measured.
        gpu_memory_gb: memory of one accelerator.
        extract_images_per_s, train_images_per_s: measured steady rates of the extraction
            and training stages, data path included (0 = derive from the FLOPs).
        extract_fixed_s, train_fixed_s: measured fixed cost of one pass of each stage
            (starting the loader's workers, the first batches).
        kmeans_level1_s_per_row, kmeans_level2_s_per_row: measured seconds of one Lloyd
            iteration per row at each level's number of centroids (0 = from the FLOPs).
        kmeans_s_per_iteration, kmeans_s_per_run: measured fixed costs of a k-means
            iteration and of a run (seeding, set-up), whatever its rows.
        runtime_bytes: measured memory of the network, its buffers and the batches in flight
            during extraction; the process keeps it through the clustering round (0 = not
            counted).
        train_bytes: measured peak memory of training at the configured batch size (network,
            heads, optimizer state, activations); 0 = counted from the model's sizes.
        pca_s_per_row, pca_fixed_s: measured PCA seconds per row (moments and projection)
            and of the eigendecomposition (0 = from the FLOPs).
    """

    gpu_tflops: float = 25.0
    kmeans_gflops: float = 250.0
    pca_gflops: float = 50.0
    decode_per_worker: float = 650.0
    gpu_memory_gb: float = 80.0
    extract_images_per_s: float = 0.0
    extract_fixed_s: float = 0.0
    train_images_per_s: float = 0.0
    train_fixed_s: float = 0.0
    kmeans_level1_s_per_row: float = 0.0
    kmeans_level2_s_per_row: float = 0.0
    kmeans_s_per_iteration: float = 0.0
    kmeans_s_per_run: float = 0.0
    runtime_bytes: int = 0
    train_bytes: int = 0
    pca_s_per_row: float = 0.0
    pca_fixed_s: float = 0.0


@dataclass(frozen=True)
class StageCost:
    """One stage's needs on one rank (bytes and seconds)."""

    stage: str
    ram: int
    gpu: int
    disk: int
    seconds: float
    note: str = ""


@dataclass(frozen=True)
class Plan:
    """The estimate for a whole run."""

    n_images: int
    world_size: int
    feature_dim: int
    layout: str
    layout_reason: str
    stages: list[StageCost]
    round_seconds: float
    epoch_seconds: float
    run_seconds: float
    problems: list[str] = field(default_factory=list)
    assumptions: Assumptions = field(default_factory=Assumptions)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ModelStats:
    """Measured on the meta device: feature dim D, parameters, forward FLOPs, the bytes
    of all layer outputs for one image (what training keeps for the backward pass) and the
    channels of each conv layer (what curate's descriptors store per image)."""

    feature_dim: int
    params: int
    flops: float
    activation_bytes: int
    conv_channels: dict[str, int]


@cache
def model_stats(arch: str, sobel: bool, resolution: int) -> ModelStats:
    """Parameters, FLOPs and activations of a backbone, without allocating it."""
    with torch.device("meta"):
        model = build_backbone(arch, sobel=sobel, resolution=resolution)
        total = [0]
        hooks = [
            m.register_forward_hook(
                lambda _m, _i, out: total.__setitem__(
                    0, total[0] + (out.numel() if isinstance(out, torch.Tensor) else 0)
                )
            )
            for m in model.modules()
            if not list(m.children())
        ]
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, resolution, resolution))
        for h in hooks:
            h.remove()
        maps = model.forward_conv(torch.empty(1, 3, resolution, resolution), model.conv_layer_names)
    params = sum(p.numel() for p in model.parameters())
    channels = {name: int(x.shape[1]) for name, x in maps.items()}
    return ModelStats(model.feature_dim, params, counter.get_total_flops(), 4 * total[0], channels)


def make_plan(
    cfg: RunConfig,
    *,
    n_images: int,
    world_size: int,
    assume: Assumptions | None = None,
    on_cpu: bool = False,
) -> Plan:
    """Estimate every stage of ``cfg`` on ``n_images`` images over ``world_size`` processes.

    Args:
        cfg: the run's settings.
        n_images: images in the collection.
        world_size: processes of the job.
        assume: throughputs (measured by ``engine.calibrate``, or stated defaults).
        on_cpu: the run computes on the CPU: what a GPU would hold (weights, activations)
            is counted in RAM.

    Raises:
        ValueError: a setting no run can use (the message names it and the fix).
    """
    a = assume or Assumptions()
    c, t = cfg.cluster, cfg.train
    problems: list[str] = []
    if n_images < 1 or world_size < 1:
        raise ValueError("the number of images and of processes must be >= 1")
    stats = model_stats(cfg.model.arch, cfg.model.sobel, cfg.data.resolution)
    dim, n, w = stats.feature_dim, n_images, world_size
    n_r = math.ceil(n / w)  # the largest shard
    d = min(c.pca_dim, dim, max(n - 1, 1))
    m, per_super, s_classes = c.super_clusters, c.sub_per_super, c.n_super_classes
    if c.needs_clustering and c.k > n:
        problems.append(
            f"cluster.k ({c.k:,}) is larger than the number of images ({n:,}); lower cluster.k"
        )
    if n < w:
        problems.append(f"{w} processes for {n} images: some processes would have no images")
    if c.pca_dim > dim:
        problems.append(
            f"cluster.pca_dim ({c.pca_dim}) exceeds the feature dimension of {cfg.model.arch} "
            f"({dim}); it would be lowered to {dim}: set cluster.pca_dim <= {dim}"
        )
    head_bytes = s_classes * per_super * dim * 4
    plan = plan_groups(w, s_classes, layout=t.layout, head_bytes=head_bytes, n_super_clusters=m)
    owned_heads = head_bytes // s_classes if plan.grouped else head_bytes
    fwd = stats.flops / (a.gpu_tflops * 1e12)  # seconds per image, forward
    decode = 1.0 / (a.decode_per_worker * max(cfg.data.workers, 1))
    disk_store = c.feature_store == "disk"
    value_bytes = 2 if c.feature_dtype == "float16" else 4
    block = block_rows(c, dim)
    stages: list[StageCost] = []

    # ============ data ============
    stages.append(
        StageCost(
            "data index + targets",
            n * (INDEX_BYTES_PER_IMAGE + TARGET_BYTES_PER_IMAGE),
            0,
            0,
            0.0,
            "every rank indexes the whole collection and holds every image's targets",
        )
    )
    # ============ one clustering round ============
    batch_gpu = stats.params * 4 + max(t.batch_size, 64) * stats.activation_bytes // 4
    if c.needs_clustering:
        chunk = min(extraction_chunk(c, dim), n_r)
        features = 0 if disk_store else n_r * dim * 4
        # Measured: the network and its buffers stay in the process through the round.
        runtime = a.runtime_bytes if on_cpu else 0
        stages.append(
            StageCost(
                "extraction",
                2 * chunk * dim * 4 + features + runtime,
                0 if runtime else batch_gpu,
                n_r * dim * value_bytes,
                a.extract_fixed_s + n_r / a.extract_images_per_s
                if a.extract_images_per_s
                else n_r * max(fwd, decode),
                f"chunks of {chunk:,} images saved to the run folder as they finish",
            )
        )
        moments = n_r * dim * dim * 2 / (a.pca_gflops * 1e9)
        covariance = 6 * dim * dim * 8  # moments, covariance, eigh and their temporaries
        whitened = n_r * d * 4
        pca_ram = covariance + (3 * block * dim * 4 if disk_store else 2 * n_r * dim * 4 + whitened)
        pca_ram += runtime
        stages.append(
            StageCost(
                "PCA + whitening",
                pca_ram,
                0,
                whitened if disk_store else 0,
                a.pca_fixed_s + n_r * a.pca_s_per_row
                if a.pca_s_per_row
                else moments + 10 * dim**3 / (a.pca_gflops * 1e9),
                f"{dim} -> {d}, from float64 moments"
                + (" streamed from disk" if disk_store else "")
                + "; PCA and k-means on "
                + _clustering_place(on_cpu, disk_store, n_r * (2 * dim + 2 * d) * 4),
            )
        )
        # In memory, the round's features stay beside their whitened copy until it ends.
        in_ram = (0 if disk_store and w == 1 else whitened) + features + runtime
        per_row = PER_IMAGE_BYTES + (4 * m if disk_store else 0)
        # With cluster.level1_sample the k-means (its iterations and final assignment) sees
        # this rank's share of the sample, and one more pass assigns every row.
        fitted = n_r if not c.level1_sample or c.level1_sample >= n else -(-c.level1_sample // w)
        level1_rows = (c.niter + 1) * fitted + (n_r if fitted < n_r else 0)
        level1 = level1_rows * (a.kmeans_level1_s_per_row or 2.0 * m * d / (a.kmeans_gflops * 1e9))
        run_cost = (c.niter + 1) * a.kmeans_s_per_iteration + a.kmeans_s_per_run
        level1 += run_cost
        stages.append(
            StageCost(
                "k-means level 1",
                in_ram + n_r * per_row + m * d * 12,
                0,
                0,
                level1,
                f"{m} super-clusters, {c.niter} iterations"
                + (f" on {c.level1_sample:,} images" if fitted < n_r else ""),
            )
        )
        level2 = (c.niter + 1) * n_r * (
            a.kmeans_level2_s_per_row or 2.0 * per_super * d / (a.kmeans_gflops * 1e9)
        ) + m * run_cost
        stages.append(
            StageCost(
                "k-means level 2",
                in_ram + n_r * per_row + per_super * d * 16 + per_super * 8,
                0,
                0,
                level2,
                f"{m} x {per_super:,} sub-clusters"
                + (", one clustering group per super-cluster" if plan.clustering_groups() else ""),
            )
        )
        if c.head_init == "centroids":
            classes = (m + c.k) * dim * 8
            stages.append(
                StageCost(
                    "head start",
                    in_ram + 2 * dim * dim * 8 + 2 * classes + block * dim * 8,
                    0,
                    0,
                    moments + 4 * dim**3 / (a.pca_gflops * 1e9),
                    f"cluster.head_init=centroids: one more pass over the features, "
                    f"{c.k:,} + {m} class means of {dim} floats",
                )
            )
    # ============ training ============
    epoch_size = t.epoch_size or n
    steps = math.ceil(epoch_size / (t.batch_size * w))
    train_gpu = stats.params * 4 * 3 + owned_heads * 3 + t.batch_size * stats.activation_bytes
    train_s = (
        a.train_fixed_s + steps * t.batch_size / a.train_images_per_s
        if a.train_images_per_s
        else steps * t.batch_size * max(3 * fwd, decode)
    )
    measured_train = a.train_bytes if on_cpu else 0
    stages.append(
        StageCost(
            "training (one epoch)",
            epoch_size // max(plan.group_size if plan.grouped else w, 1) * 8 * 2 + measured_train,
            0 if measured_train else train_gpu,
            0,
            train_s,
            f"{steps:,} steps of {t.batch_size} images per process; heads "
            f"{owned_heads / 1e9:.2f} GB per process ({plan.layout})",
        )
    )
    checkpoint = (stats.params + head_bytes // 4) * 4 * 2 + n * TARGET_BYTES_PER_IMAGE + c.k * d * 4
    stages.append(
        StageCost(
            "checkpoint (rank 0)",
            (head_bytes * 2 if w > 1 else 0),
            0,
            checkpoint,
            0.0,
            "weights, momentum, targets, centroids; rank 0 gathers the sub-heads",
        )
    )
    if on_cpu:
        stages = [replace(s, ram=s.ram + s.gpu, gpu=0) for s in stages]
    elif train_gpu > a.gpu_memory_gb * 1e9:
        problems.append(
            f"training needs about {train_gpu / 1e9:.1f} GB per accelerator, over "
            f"{a.gpu_memory_gb:g} GB: lower train.batch_size"
            + (
                ""
                if plan.grouped
                else ", or use train.layout=grouped (a multiple of "
                f"{s_classes} processes) so each process holds one sub-head"
            )
        )
    limit = c.memory_limit_bytes
    peak = stages[0].ram + max(s.ram for s in stages[1:])
    if limit is not None and peak > limit:
        fix = "--feature-store disk" if not disk_store else "more processes or a larger limit"
        problems.append(
            f"peak RAM per process about {peak / 1e9:.1f} GB is over cluster.memory_limit "
            f"({c.memory_limit}); use {fix}"
        )
    if c.needs_clustering:  # after the limit check: `deepercluster curate` runs on its own
        cur = CurateSettings(size=1)
        pairs = cur.products(n, c.k)
        per_pair = a.kmeans_level2_s_per_row / per_super or 2.0 * d / (a.kmeans_gflops * 1e9)
        # Two passes over the images: the embeddings, and the conv layer compared for
        # near-duplicates (a partial forward, counted as a whole one).
        extraction = next(s.seconds for s in stages if s.stage == "extraction")
        seconds = 2 * extraction + pairs * per_pair
        note = (
            f"`deepercluster curate` with its defaults: embeddings and {cur.dedup_layer} "
            f"descriptors again, ~{pairs:.2g} products"
        )
        # The embeddings' store, and the GeM-pooled conv layer's (C floats per image).
        layer_dim = stats.conv_channels.get(cur.dedup_layer, 0)
        ram, disk = cur.memory_bytes(n), n * (d + layer_dim) * 4
        stages.append(StageCost("curate (afterwards)", ram, 0, disk, seconds, note))
    round_s = sum(s.seconds for s in stages if s.stage.startswith(("extraction", "PCA", "k-means")))
    rounds = math.ceil(t.epochs / c.reassign) if c.needs_clustering else 0
    return Plan(
        n_images=n,
        world_size=w,
        feature_dim=dim,
        layout=plan.layout,
        layout_reason=plan.reason,
        stages=stages,
        round_seconds=round_s,
        epoch_seconds=train_s,
        run_seconds=rounds * round_s + t.epochs * train_s,
        problems=problems,
        assumptions=a,
    )


def _clustering_place(on_cpu: bool, disk_store: bool, need: int) -> str:
    """Where PCA and k-means run (``outofcore.clustering_device`` decides at run time)."""
    if on_cpu:
        return "the CPU"
    if disk_store:
        return "the CPU (cluster.feature_store=disk)"
    return f"the GPU if {need / 2**30:.1f} GiB fit in half its free memory, else the CPU"
