"""Throughputs for ``deepercluster plan --calibrate``, measured by running the real stages.

A FLOP count divided by a peak rate says little about a CPU run: at 32 px a training step
spends as much on the data path, the heads and the optimizer as in the convolutions, and a
busy machine runs at a fraction of its peak. So calibration runs each stage's own code on a
sample of the user's images, at the configured batch size, workers, precision and device:

- extraction: ``features.extract_features`` over a ``ClusterView`` loader;
- training: ``engine.train.train_one_epoch`` with the full heads and SGD, over a
  ``TrainView`` loader (augmentation, rotation, unreadable-image handling included);
- k-means: a Lloyd iteration of each level's shape on random data;
- PCA: the float64 moments of a block of features.

Each of the first two runs twice, over a short and a longer sample: the difference of the two
times is the steady rate, and what is left of the short run is the fixed cost of a pass
(starting the DataLoader's workers, the first batches), which the plan charges once per pass.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from deepercluster.config import RunConfig
from deepercluster.data import (
    ClusterTransform,
    ClusterView,
    Collection,
    TrainTransform,
    TrainView,
    uniform_epoch_plan,
)
from deepercluster.engine.plan import Assumptions, model_stats
from deepercluster.engine.train import Targets, train_one_epoch
from deepercluster.features import extract_features
from deepercluster.models import Backbone, HierarchicalHeads, build_backbone

__all__ = ["calibrate"]


def calibrate(
    cfg: RunConfig,
    *,
    device: torch.device,
    collection: Collection | None = None,
    steps: int = 8,
) -> Assumptions:
    """Measure this machine's throughputs for ``cfg`` (seconds to a minute).

    Args:
        cfg: the run's settings (model, resolution, batch size, workers, precision, k, m).
        device: where the run would train.
        collection: the images; without them the convnet is timed on random tensors and
            the data path is left to the default assumption.
        steps: training steps of the longer timed pass (the shorter one takes a quarter).

    Returns:
        :class:`Assumptions` with the measured rates filled in.
    """
    res = cfg.data.resolution
    stats = model_stats(cfg.model.arch, cfg.model.sobel, res)
    torch.manual_seed(0)
    model = build_backbone(cfg.model.arch, sobel=cfg.model.sobel, resolution=res).to(device)
    d = min(cfg.cluster.pca_dim, stats.feature_dim)
    level1, level2 = _kmeans_seconds(d, cfg.cluster.super_clusters, cfg.cluster.sub_per_super)
    measured: dict[str, float] = {
        "kmeans_level1_s_per_row": level1,
        "kmeans_level2_s_per_row": level2,
        "pca_gflops": _pca_gflops(stats.feature_dim),
    }
    if collection is None:
        measured["gpu_tflops"] = _convnet_tflops(model, cfg, device, stats.flops)
    else:
        n_short, n_long = _passes(cfg.train.batch_size, steps, len(collection))
        rate, fixed = _two_passes(
            lambda n: _extract(model, collection, cfg, device, n), n_short, n_long
        )
        measured |= {"extract_images_per_s": rate, "extract_fixed_s": fixed}
        rate, fixed = _two_passes(
            lambda n: _train(model, collection, cfg, device, n), n_short, n_long
        )
        measured |= {"train_images_per_s": rate, "train_fixed_s": fixed}
    return Assumptions(**measured)


def _passes(batch: int, steps: int, n_images: int) -> tuple[int, int]:
    """Images of the short and the long pass: whole batches, within the collection."""
    long = min(batch * steps, n_images)
    short = min(batch * max(1, steps // 4), max(1, long // 4))
    return short, long


def _two_passes(run: Callable[[int], float], n_short: int, n_long: int) -> tuple[float, float]:
    """(images/s of the steady state, seconds of fixed cost per pass) from two timed passes."""
    run(n_short)  # warm-up: first-call allocations, lazy imports, caches
    t_short, t_long = run(n_short), run(n_long)
    extra = t_long - t_short
    if n_long <= n_short or extra <= 0:  # too few images to tell the two apart
        return n_long / t_long, 0.0
    rate = (n_long - n_short) / extra
    return rate, max(0.0, t_short - n_short / rate)


def _extract(
    model: Backbone, collection: Collection, cfg: RunConfig, device: torch.device, n: int
) -> float:
    view = ClusterView(
        collection,
        ClusterTransform(cfg.data.resolution, cfg.data.resize or None),
        indices=_sample(len(collection), n),
    )
    loader = DataLoader(
        view, batch_size=max(cfg.train.batch_size, 64), num_workers=cfg.data.workers
    )
    tic = time.perf_counter()
    extract_features(
        model, loader, len(collection), model.feature_dim, device=device,
        precision=cfg.train.precision, progress=False,
    )  # fmt: skip
    return time.perf_counter() - tic


def _train(
    model: Backbone, collection: Collection, cfg: RunConfig, device: torch.device, n: int
) -> float:
    c = cfg.cluster
    heads = HierarchicalHeads(model.feature_dim, c.n_super_classes, c.sub_per_super).to(device)
    optimizer = torch.optim.SGD(
        [p for p in [*model.parameters(), *heads.parameters()] if p.requires_grad],
        lr=1e-4,
        momentum=cfg.train.momentum,
    )
    rng = np.random.default_rng(0)
    labels = rng.integers(0, c.k, len(collection))
    plan = uniform_epoch_plan(labels, size=n, seed=0, epoch=0, rotation=c.rotation)
    view = TrainView(
        collection,
        TrainTransform(
            cfg.data.resolution, scale=(cfg.data.crop_scale_min, 1.0), hflip=cfg.data.hflip
        ),
        plan,
        seed=0,
        epoch=0,
    )
    loader = DataLoader(view, batch_size=cfg.train.batch_size, num_workers=cfg.data.workers)
    targets = Targets(
        super_clusters=torch.from_numpy(labels // c.sub_per_super),
        sub_clusters=torch.from_numpy(labels % c.sub_per_super),
        n_super_clusters=c.super_clusters,
        rotation=c.rotation,
    )
    tic = time.perf_counter()
    train_one_epoch(
        model, heads, loader, optimizer, targets=targets,
        lrs=np.full(math.ceil(n / cfg.train.batch_size), 1e-4), device=device,
        precision=cfg.train.precision, progress=False,
    )  # fmt: skip
    return time.perf_counter() - tic


def _sample(n_images: int, n: int) -> np.ndarray:
    return np.sort(np.random.default_rng(0).choice(n_images, size=n, replace=False))


def _convnet_tflops(
    model: Backbone, cfg: RunConfig, device: torch.device, flops: float, seconds: float = 3.0
) -> float:
    """Forward + backward FLOPS at the configured batch size, on random images."""
    res = cfg.data.resolution
    batch = torch.randn(cfg.train.batch_size, 3, res, res, device=device)
    model(batch).sum().backward()  # warm-up
    done, tic = 0, time.perf_counter()
    while done == 0 or time.perf_counter() - tic < seconds:
        model(batch).sum().backward()
        done += len(batch)
    return done * 3 * flops / (time.perf_counter() - tic) / 1e12


def _kmeans_seconds(d: int, m: int, per_super: int, rows: int = 20_000) -> tuple[float, float]:
    """Seconds per row and Lloyd iteration at level 1 (m centroids) and level 2 (k/m)."""
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((rows, d), dtype=np.float32))
    return _lloyd_seconds(x, m), _lloyd_seconds(x, per_super)


def _lloyd_seconds(x: torch.Tensor, k: int, iters: int = 3) -> float:
    """One Lloyd iteration's seconds per row: distances, argmin, per-cluster sums."""
    centroids = x[: max(1, min(k, len(x)))].clone()
    norms = (centroids * centroids).sum(1)
    sums = torch.zeros_like(centroids)
    tic = time.perf_counter()
    for _ in range(iters):
        labels = (norms - 2 * x @ centroids.T).argmin(1)
        sums.zero_().index_add_(0, labels, x)
    return (time.perf_counter() - tic) / iters / len(x)


def _pca_gflops(dim: int, rows: int = 8192) -> float:
    """float64 GFLOPS of the PCA's moment accumulation (x^T x over blocks of rows)."""
    x = torch.randn(rows, dim, dtype=torch.float64)
    tic = time.perf_counter()
    x.T @ x
    return 2 * rows * dim * dim / max(time.perf_counter() - tic, 1e-9) / 1e9
