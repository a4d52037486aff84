"""Throughputs for ``deepercluster plan --calibrate``, measured by running the real stages.

A FLOP count divided by a peak rate says little about a CPU run: at 32 px a training step
spends as much on the data path, the heads and the optimizer as in the convolutions, and a
busy machine runs at a fraction of its peak. So calibration runs each stage's own code on a
sample of the user's images, at the configured batch size, workers, precision and device:

- extraction: ``features.extract_features`` over a ``ClusterView`` loader;
- training: ``engine.train.train_one_epoch`` with the full heads and SGD, over a
  ``TrainView`` loader (augmentation, rotation, unreadable-image handling included);
- k-means: the package's k-means at each level's shape, on random data;
- PCA: the package's fit and projection, on random data.

Each of the first two runs twice, over a short and a longer sample: the difference of the two
times is the steady rate, and what is left of the short run is the fixed cost of a pass
(starting the DataLoader's workers, the first batches), which the plan charges once per pass.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from deepercluster.cluster import feature_moments, fit_pca, kmeans, pca_from_moments
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

__all__ = ["PeakRSS", "calibrate", "resident_bytes"]


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
    start_rss = resident_bytes()
    torch.manual_seed(0)
    model = build_backbone(cfg.model.arch, sobel=cfg.model.sobel, resolution=res).to(device)
    d = min(cfg.cluster.pca_dim, stats.feature_dim)
    measured: dict[str, Any] = _kmeans_seconds(
        d, cfg.cluster.super_clusters, cfg.cluster.sub_per_super
    )
    measured["pca_s_per_row"], measured["pca_fixed_s"] = _pca_seconds(stats.feature_dim, d)
    if collection is None:
        measured["gpu_tflops"] = _convnet_tflops(model, cfg, device, stats.flops)
    else:
        n_short, n_long = _passes(cfg.train.batch_size, steps, len(collection))
        with PeakRSS() as peak:
            rate, fixed = _two_passes(
                lambda n: _extract(model, collection, cfg, device, n), n_short, n_long
            )
        # What extraction holds besides its (N, D) float32 features: the network, its
        # buffers, the batches in flight; the process keeps it for the rest of the round.
        features = len(collection) * stats.feature_dim * 4
        measured |= {
            "extract_images_per_s": rate,
            "extract_fixed_s": fixed,
            "runtime_bytes": max(0, peak.bytes - start_rss - features),
        }
        with PeakRSS() as peak:
            rate, fixed = _two_passes(
                lambda n: _train(model, collection, cfg, device, n), n_short, n_long
            )
        measured |= {
            "train_images_per_s": rate,
            "train_fixed_s": fixed,
            "train_bytes": max(0, peak.bytes - start_rss),
        }
    return Assumptions(**measured)


def resident_bytes() -> int:
    """This process's resident memory in bytes (0 where /proc is not available)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


class PeakRSS:
    """The highest resident memory of this process while the block runs (sampled)."""

    def __init__(self, every_s: float = 0.005) -> None:
        self.bytes = 0
        self._every = every_s
        self._stop = threading.Event()

    def start(self) -> PeakRSS:
        """Start sampling (from a thread of its own)."""
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> int:
        """Stop sampling; the peak in bytes."""
        self._stop.set()
        self._thread.join()
        return self.bytes

    def __enter__(self) -> PeakRSS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _poll(self) -> None:
        while not self._stop.wait(self._every):
            self.bytes = max(self.bytes, resident_bytes())


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


def _kmeans_seconds(d: int, m: int, per_super: int, rows: int = 20_000) -> dict[str, float]:
    """The package's k-means on random (rows, d) features, modelled as
    ``t(n rows, i iterations) = per_run + (i + 1) * (per_iteration + n * per_row)`` (the
    ``+ 1`` is the final assignment) and fitted from three runs at each level's k."""
    x = np.random.default_rng(0).standard_normal((rows, d), dtype=np.float32)
    small = rows // 10

    def seconds(n: int, k: int, niter: int) -> float:
        tic = time.perf_counter()
        kmeans(x[:n], k, niter=niter, seed=0)
        return time.perf_counter() - tic

    def fit(k: int) -> tuple[float, float, float]:
        k = max(1, min(k, small // 4))
        seconds(small, k, 1)  # warm-up
        t2, t6, t6_small = seconds(rows, k, 2), seconds(rows, k, 6), seconds(small, k, 6)
        per_row = max((t6 - t6_small) / 7 / (rows - small), 1e-12)
        per_iteration = max((t6 - t2) / 4 - rows * per_row, 0.0)
        per_run = max(t2 - 3 * (per_iteration + rows * per_row), 0.0)
        return per_row, per_iteration, per_run

    level1, (level2, per_iteration, per_run) = fit(m)[0], fit(per_super)
    return {
        "kmeans_level1_s_per_row": level1,
        "kmeans_level2_s_per_row": level2,
        "kmeans_s_per_iteration": per_iteration,
        "kmeans_s_per_run": per_run,
    }


def _pca_seconds(dim: int, out_dim: int, rows: int = 8192) -> tuple[float, float]:
    """The package's PCA fit and projection on random (rows, dim) features: (seconds per row
    of the moments and the projection, fixed seconds of the eigendecomposition)."""
    x = np.random.default_rng(0).standard_normal((rows, dim), dtype=np.float32)
    out_dim = min(out_dim, dim, rows - 1)
    tic = time.perf_counter()
    pca = fit_pca(x, dim=out_dim)
    fit_s = time.perf_counter() - tic
    tic = time.perf_counter()
    pca.apply(x)
    apply_s = time.perf_counter() - tic
    n, total, outer = feature_moments(x)
    tic = time.perf_counter()
    pca_from_moments(n, total, outer, dim=out_dim)
    eigh_s = time.perf_counter() - tic
    return (max(fit_s - eigh_s, 0.0) + apply_s) / rows, eigh_s
