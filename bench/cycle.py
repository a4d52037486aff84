"""One DeeperCluster cycle on CIFAR-10: extract, PCA, k-means, train; time and peak memory.

The stages are the library functions ``engine.fit`` chains (``extract_features`` over a
``ClusterView`` DataLoader, ``fit_pca`` + ``apply``, ``hierarchical_kmeans``, a uniform epoch
plan and ``train_one_epoch``), called here one by one so that each gets its own clock and
memory peak. ``--quick`` uses a subset of the images (``scripts/cifar_cycle.py`` runs the whole
50,000 through ``deepercluster.train``). Memory is the peak resident set size of this process
above its level when the stage started, sampled every 5 ms from ``/proc/self/statm`` (DataLoader
worker processes not included); on CUDA also the peak allocated device memory.

The RSS above a start only counts memory a stage takes from the system, not memory the
process had freed before and the C allocator still holds. So the cycle runs in a fresh
interpreter, and the allocator hands its free pages back before each stage (glibc's
``malloc_trim``). Run in the process of ``bench all``, after the heads benchmark had freed
gigabytes, the extract stage read +3 and +131 MiB in two runs, and +67 MiB when the cycle ran
a second time in one process; in a fresh interpreter it reads +180 to +191 MiB.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from types import TracebackType
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader

from bench.common import Context, Row, info, sync
from deepercluster.cluster.hierarchical import hierarchical_kmeans
from deepercluster.cluster.preprocess import fit_pca
from deepercluster.config import RunConfig, load_config
from deepercluster.data import (
    ClusterTransform,
    ClusterView,
    TrainTransform,
    TrainView,
    open_collection,
    uniform_epoch_plan,
)
from deepercluster.engine.calibrate import PeakRSS, calibrate, resident_bytes
from deepercluster.engine.plan import make_plan
from deepercluster.engine.train import Targets, train_one_epoch
from deepercluster.features import extract_features
from deepercluster.models import HierarchicalHeads, build_backbone

NAME = "cycle"
T = TypeVar("T")


def _malloc_trim() -> None:
    """Hand the C allocator's free memory back to the kernel (glibc's ``malloc_trim(0)``), so
    that a stage's RSS above its start counts only what the stage takes (module docstring).
    A measurement aid of this benchmark only; nothing where glibc is absent."""
    libc = ctypes.CDLL(None)
    if hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


class Stage:
    """Wall time and peak memory (RSS above the start and absolute, CUDA peak allocated) of a
    block."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = 0.0
        self.peak_rss = 0
        self.peak_abs = 0
        self.cuda_peak = 0

    def __enter__(self) -> Stage:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._cuda_base = torch.cuda.memory_allocated(self.device)
        _malloc_trim()
        self._start = resident_bytes()
        self._peak = PeakRSS().start()
        self._tic = time.perf_counter()
        return self

    def __exit__(
        self, tp: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        sync(self.device)
        self.seconds = time.perf_counter() - self._tic
        self.peak_abs = self._peak.stop()
        self.peak_rss = self.peak_abs - self._start
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device) - self._cuda_base
            self.cuda_peak = int(peak)


def run(ctx: Context) -> list[Row]:
    """The cycle's rows, measured in a fresh interpreter set up like this one."""
    cifar = os.environ.get("BENCH_CIFAR", "/work/shared/data/cifar10/train.tar")
    if not os.path.exists(cifar):
        return []
    # The plan is calibrated in an interpreter of its own, as `deepercluster plan` runs.
    planned = None if ctx.size == "tiny" else _fresh(_planned, ctx, cifar)
    rows, measured = _fresh(_cycle, ctx, cifar)
    if planned is not None:
        rows += _plan_rows(planned, measured, _settings(ctx)["n"])
    return rows


def _fresh(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a fresh interpreter set up like this one."""
    with ProcessPoolExecutor(
        1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_child_settings,
        initargs=(torch.get_num_threads(), multiprocessing.get_start_method()),
    ) as pool:
        return pool.submit(fn, *args).result()


def _settings(ctx: Context) -> dict[str, int]:
    """The cycle's shapes (images, resolution, k, m, PCA dimension, batch, workers)."""
    return {
        "n": ctx.pick(128, 5000, 50_000), "res": 32, "k": ctx.pick(16, 256, 1000), "m": 4,
        "pca_dim": ctx.pick(16, 128, 128), "batch": 128, "workers": 1,
    }  # fmt: skip


def _config(ctx: Context) -> RunConfig:
    """The cycle's settings as a run configuration (what `deepercluster plan` is given)."""
    s = _settings(ctx)
    return load_config(
        preset="deepercluster",
        overrides=[
            "model.arch=small", f"data.resolution={s['res']}", f"data.workers={s['workers']}",
            "data.crop_scale_min=0.2", f"cluster.k={s['k']}", f"cluster.super_clusters={s['m']}",
            f"cluster.pca_dim={s['pca_dim']}", f"train.batch_size={s['batch']}",
            f"train.device={ctx.device.type}",
            # The paper's heads, as the bare loop it is measured against (the preset's centroid
            # start adds one pass over the features).
            "cluster.head_init=random", "cluster.super_carry=none",
        ],
    )  # fmt: skip


def _planned(ctx: Context, cifar: str) -> dict[str, tuple[float, float]]:
    """``deepercluster plan --calibrate`` for the cycle: (seconds, RAM bytes) per stage."""
    collection = open_collection(cifar)
    cfg = _config(ctx)
    assume = calibrate(cfg, device=ctx.device, collection=collection)
    n = min(len(collection), _settings(ctx)["n"])
    plan = make_plan(cfg, n_images=n, world_size=1, assume=assume, on_cpu=ctx.device.type == "cpu")
    by_name = {s.stage: s for s in plan.stages}
    return {
        name: (sum(by_name[p].seconds for p in parts), max(by_name[p].ram for p in parts))
        for name, parts in _PLAN_STAGES.items()
    }


def _child_settings(threads: int, start_method: str) -> None:
    """This process's torch threads and DataLoader start method in the fresh interpreter (a
    spawned process defaults to spawning its own workers, which re-import torch: slower
    stages)."""
    torch.set_num_threads(threads)
    multiprocessing.set_start_method(start_method, force=True)


def stage_time_name(stage: str, n: int | str) -> str:
    """The name of a stage's time row."""
    return f"{stage}: seconds for {n} images"


def stage_memory_name(stage: str, n: int | str) -> str:
    """The name of a stage's peak-memory row."""
    return f"{stage}: peak RSS above the stage's start, {n} images"


def _cycle(ctx: Context, cifar: str) -> tuple[list[Row], dict[str, tuple[float, float]]]:
    """The cycle's rows, and (seconds, peak RSS above the cycle's start) of each stage."""
    collection = open_collection(cifar)
    shape = _settings(ctx)
    n = min(len(collection), shape["n"])
    res, k, m, pca_dim = shape["res"], shape["k"], shape["m"], shape["pca_dim"]
    batch, workers, precision = shape["batch"], shape["workers"], "fp32"
    _malloc_trim()
    base = resident_bytes()  # what the data of the cycle's stages adds to, as the plan counts it
    torch.manual_seed(0)
    model = build_backbone("small", sobel=True, resolution=res).to(ctx.device)
    heads = HierarchicalHeads(model.feature_dim, 4 * m, k // m).to(ctx.device)
    opt = torch.optim.SGD(
        [*model.parameters(), *heads.parameters()], lr=0.05, momentum=0.9, weight_decay=1e-5
    )
    stages: dict[str, Stage] = {}

    with Stage(ctx.device) as stages["extract"]:
        view = ClusterView(collection, ClusterTransform(res), indices=np.arange(n))
        # The batch the clustering extraction uses in a run (engine/clustering.py).
        loader = DataLoader(view, batch_size=max(batch, 64), num_workers=workers)
        feats = extract_features(
            model, loader, n, model.feature_dim, device=ctx.device, progress=False
        ).features
    with Stage(ctx.device) as stages["pca"]:
        reduced = fit_pca(feats, dim=pca_dim).apply(feats)
    with Stage(ctx.device) as stages["kmeans"]:
        result = hierarchical_kmeans(reduced, k=k, m=m, niter=10, seed=0)
    del feats, reduced  # a run drops the round's features before it trains
    with Stage(ctx.device) as stages["train"]:
        plan = uniform_epoch_plan(result.labels, size=n, seed=0, epoch=0, rotation=True)
        train_view = TrainView(collection, TrainTransform(res, (0.2, 1.0)), plan, seed=0, epoch=0)
        train_loader = DataLoader(train_view, batch_size=batch, num_workers=workers)
        targets = Targets(
            super_clusters=torch.from_numpy(result.super_assignments),
            sub_clusters=torch.from_numpy(result.sub_assignments),
            n_super_clusters=m,
            rotation=True,
        )
        train_one_epoch(
            model,
            heads,
            train_loader,
            opt,
            targets=targets,
            lrs=np.full(-(-n // batch), 0.05),
            device=ctx.device,
            precision=precision,
            progress=False,
        )
    total = sum(s.seconds for s in stages.values())
    rows = []
    for name, s in stages.items():
        # Time and memory as rows of their own: a row's name must not carry a measured value,
        # so that two runs' results compare row by row.
        rows.append(
            info(
                NAME,
                stage_time_name(name, n),
                s.seconds,
                "s",
                cuda_peak_bytes=s.cuda_peak,
                images_per_s=n / s.seconds,
            )
        )
        rows.append(
            info(
                NAME,
                stage_memory_name(name, n),
                s.peak_rss / 2**20,
                "MiB",
                peak_rss_bytes=s.peak_rss,
            )
        )
    rows.append(info(NAME, f"cycle total for {n} images (k={k}, m={m}, {res}px)", total, "s"))
    measured = {name: (st.seconds, float(st.peak_abs - base)) for name, st in stages.items()}
    return rows, measured


# The plan's stages that make up each of the cycle's.
_PLAN_STAGES = {
    "extract": ("extraction",),
    "pca": ("PCA + whitening",),
    "kmeans": ("k-means level 1", "k-means level 2"),
    "train": ("training (one epoch)",),
}


def _plan_rows(
    planned: dict[str, tuple[float, float]], measured: dict[str, tuple[float, float]], n: int
) -> list[Row]:
    """The plan against the cycle, stage by stage: time, and peak RSS above the cycle's start
    (what the plan's RAM column counts: what the stage holds, the network's on a CPU).
    Line: within 30%."""
    rows = []
    for name in _PLAN_STAGES:
        for i, what in enumerate(("seconds", "peak memory")):
            predicted, actual = planned[name][i], max(measured[name][i], 1e-9)
            ratio = predicted / actual
            rows.append(
                Row(
                    NAME,
                    f"plan --calibrate / measured, {name} {what}, {n} images",
                    ratio,
                    "x",
                    target="0.7-1.3",
                    ok=0.7 <= ratio <= 1.3,
                    detail={"predicted": predicted, "measured": actual},
                )
            )
    return rows
