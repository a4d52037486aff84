"""Data pipeline: decoded + augmented images per second per worker, and the starvation check.

Per worker (one process, one torch thread, as a DataLoader worker runs): our training item
(``TrainView``: tar read, robust decode, random-resized crop, flip, normalise, rotation) and
our clustering item (``ClusterView``: resize, centre crop, normalise) against a minimal
Pillow loop over the same tar members (read bytes, ``Image.open``, ``convert("RGB")``,
``resize((R, R))``, ``np.asarray``). 32 px CIFAR-10 JPEGs and food photos (~500x350) to 224 px.
Ours is fetched as a DataLoader worker fetches it, item by item.

Starvation: ``train_one_epoch`` fed by a DataLoader over ``TrainView`` with W workers; the
time the loop spends waiting in ``next(loader)`` over the epoch's wall time is the fraction
of time the step is data-starved.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader

from bench.common import (
    Context,
    Row,
    at_most,
    info,
    interleaved,
    median,
    per_rep,
    ratio,
    torch_threads,
)
from deepercluster.data import (
    ClusterTransform,
    ClusterView,
    TrainTransform,
    TrainView,
    open_collection,
)
from deepercluster.data.samplers import EpochPlan
from deepercluster.data.tarshards import TarShards
from deepercluster.engine.train import Targets, train_one_epoch
from deepercluster.models import HierarchicalHeads, build_backbone

NAME = "data"


def _sources() -> dict[str, tuple[str, int]]:
    """label -> (tar path, output side); the environment can point at other tars (tests)."""
    return {
        "CIFAR-10 32px JPEG": (
            os.environ.get("BENCH_CIFAR", "/work/shared/data/cifar10/train.tar"),
            32,
        ),
        "food photos to 224px": (
            os.environ.get("BENCH_FOOD", "/work/shared/data/food-photos/images.tar"),
            224,
        ),
    }


def _per_worker(ctx: Context, label: str, path: str, res: int) -> list[Row]:
    n = ctx.pick(32, {32: 2000, 224: 200}[res], {32: 5000, 224: 1000}[res])
    collection = open_collection(path)
    n = min(n, len(collection))
    shards = TarShards([path])
    rng = np.random.default_rng(0)
    plan = EpochPlan(
        indices=rng.permutation(len(collection))[:n].astype(np.int64),
        rotations=rng.integers(4, size=n).astype(np.int64),
    )
    train_view = TrainView(collection, TrainTransform(res), plan, seed=0, epoch=0)
    cluster_view = ClusterView(collection, ClusterTransform(res), indices=plan.indices)

    def ours_train() -> None:
        for j in range(n):
            train_view[j]

    def ours_cluster() -> None:
        for j in range(n):
            cluster_view[j]

    def minimal() -> None:
        for i in plan.indices:
            img = Image.open(io.BytesIO(shards.read_bytes(int(i)))).convert("RGB")
            np.asarray(img.resize((res, res), Image.Resampling.BILINEAR))

    with torch_threads(1):
        times = interleaved(
            {
                "train": ours_train,
                "cluster": ours_cluster,
                "minimal": minimal,
            },
            ctx,
        )
    rate = {k: n / median(v) for k, v in times.items()}
    return [
        at_most(
            NAME,
            f"{label}: our training item / minimal Pillow, per image",
            ratio(times, "train", "minimal"),
            1.25,
            ours_images_per_s=rate["train"],
            minimal_images_per_s=rate["minimal"],
            images=n,
            per_rep=per_rep(times, "train", "minimal"),
        ),
        at_most(
            NAME,
            f"{label}: our clustering item / minimal Pillow, per image",
            ratio(times, "cluster", "minimal"),
            1.25,
            ours_images_per_s=rate["cluster"],
            minimal_images_per_s=rate["minimal"],
            per_rep=per_rep(times, "cluster", "minimal"),
        ),
        info(NAME, f"{label}: our training items per second per worker", rate["train"], "img/s"),
    ]


class _Timed:
    """Wraps a loader; ``waited`` accumulates the seconds spent in ``next()``."""

    def __init__(self, loader: DataLoader[tuple[Tensor, int, int, str]]) -> None:
        self.loader = loader
        self.waited = 0.0

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor, list[str]]]:
        it = iter(self.loader)
        while True:
            tic = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.waited += time.perf_counter() - tic
            yield batch


def _starvation(ctx: Context, path: str) -> list[Row]:
    res, batch = 32, ctx.pick(16, 128, 128)
    steps = ctx.pick(3, 12, 40)
    collection = open_collection(path)
    n = batch * steps
    rng = np.random.default_rng(1)
    m, n_sub = 4, 64
    plan = EpochPlan(
        indices=rng.integers(len(collection), size=n).astype(np.int64),
        rotations=rng.integers(4, size=n).astype(np.int64),
    )
    targets = Targets(
        super_clusters=torch.from_numpy(rng.integers(m, size=len(collection))),
        sub_clusters=torch.from_numpy(rng.integers(n_sub, size=len(collection))),
        n_super_clusters=m,
        rotation=True,
    )
    rows: list[Row] = []
    for workers in ctx.pick((1,), (0, 1, 2), (0, 1, 2)):
        torch.manual_seed(0)
        model = build_backbone("small", sobel=True, resolution=res).to(ctx.device)
        heads = HierarchicalHeads(model.feature_dim, 4 * m, n_sub).to(ctx.device)
        opt = torch.optim.SGD([*model.parameters(), *heads.parameters()], lr=0.01, momentum=0.9)
        view = TrainView(collection, TrainTransform(res), plan, seed=0, epoch=0)
        loader = _Timed(DataLoader(view, batch_size=batch, num_workers=workers))
        tic = time.perf_counter()
        train_one_epoch(
            model,
            heads,
            loader,
            opt,
            targets=targets,
            lrs=np.full(steps, 0.01),
            device=ctx.device,
            progress=False,
        )
        total = time.perf_counter() - tic
        rows.append(
            info(
                NAME,
                f"starvation: fraction of the epoch waiting for data, {workers} worker(s)",
                loader.waited / total,
                "frac",
                epoch_s=total,
                images_per_s=n / total,
                steps=steps,
                batch=batch,
            )
        )
    return rows


def run(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    sources = _sources()
    for label, (path, res) in sources.items():
        if os.path.exists(path):
            rows += _per_worker(ctx, label, path, res)
    cifar = sources["CIFAR-10 32px JPEG"][0]
    if os.path.exists(cifar):
        rows += _starvation(ctx, cifar)
    return rows
