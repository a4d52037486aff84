"""Feature extraction over a collection vs bare batched inference of the same model.

Ours: ``features.extract_features`` fed by a DataLoader over ``ClusterView`` (decode, resize,
centre crop, normalise) of an ``ArrayCollection`` or of the CIFAR-10 JPEG tar, as
``engine.clustering`` builds it. Bare: ``model(x)`` under ``torch.no_grad()`` in eval mode over
the same number of images already in memory as one tensor. A third figure isolates the loop:
``extract_features`` over batches already in memory, against the same bare inference.

With DataLoader workers, each ratio row also records the CPU seconds the workers spent per
call (``worker_cpu_s``, from ``getrusage(RUSAGE_CHILDREN)`` once the loader has joined them),
and a row of its own gives that time over a bare call's. Where the inference already keeps
the cores busy (2 cores and 2 intra-op threads here), the workers' time comes out of the
inference's: that row is about how far above 1 the ratio with workers can be expected to
read (docs/performance.md, "Reading the results").
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable

import numpy as np
import torch
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
    without_emulated_bf16,
)
from deepercluster.data import (
    ArrayCollection,
    ClusterTransform,
    ClusterView,
    Collection,
    open_collection,
)
from deepercluster.features import autocast, extract_features
from deepercluster.models import build_backbone

NAME = "extract"


def _model(ctx: Context, res: int, channels_last: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return build_backbone("small", sobel=True, resolution=res).to(ctx.device, memory_format=fmt)


def _children_cpu() -> float:
    """User + system CPU seconds of this process' children that have been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _setting(
    ctx: Context,
    sources: dict[str, Collection],
    n: int,
    batch: int,
    res: int,
    precision: str,
    cl: bool,
    workers: int,
    warmup: int | None = None,
) -> list[Row]:
    """Rows of one (precision, memory format, workers) setting, all sides interleaved."""
    rows: list[Row] = []
    model = _model(ctx, res, cl)
    dim = model.feature_dim  # type: ignore[attr-defined]
    images = torch.randn(n, 3, res, res).to(ctx.device)
    if cl:
        images = images.contiguous(memory_format=torch.channels_last)
    label = f"{precision}{' channels_last' if cl else ''}, {workers} worker(s)"

    @torch.no_grad()
    def bare(model: torch.nn.Module = model, images: torch.Tensor = images) -> object:
        model.eval()
        out = None
        for start in range(0, n, batch):
            with autocast(ctx.device, precision):
                out = model(images[start : start + batch]).float().cpu()
        return out

    in_memory = [
        (
            images[s : s + batch].cpu(),
            torch.arange(s, min(s + batch, n)),
            [""] * len(images[s : s + batch]),
        )
        for s in range(0, n, batch)
    ]

    def ours_loop(model: torch.nn.Module = model) -> object:
        return extract_features(
            model, in_memory, n, dim, device=ctx.device, precision=precision, progress=False
        )

    fns: dict[str, Callable[[], object]] = {"bare": bare}
    if workers == 0:
        fns["loop"] = ours_loop
    # Per source, the workers' CPU seconds of every call (warm-up included).
    worker_cpu: dict[str, list[float]] = {name: [] for name in sources}
    for src_name, collection in sources.items():
        view = ClusterView(collection, ClusterTransform(res), indices=np.arange(n))

        def ours(
            model: torch.nn.Module = model, view: ClusterView = view, src_name: str = src_name
        ) -> object:
            before = _children_cpu()
            loader = DataLoader(view, batch_size=batch, num_workers=workers)
            out = extract_features(
                model, loader, n, dim, device=ctx.device, precision=precision, progress=False
            )
            # The loader has joined its workers when the loop ends: their time is counted.
            worker_cpu[src_name].append(_children_cpu() - before)
            return out

        fns[src_name] = ours
    times = interleaved(fns, ctx, reps=max(2, ctx.reps - 2), warmup=warmup)
    bare_s = median(times["bare"])
    if "loop" in times:
        rows.append(
            at_most(
                NAME,
                f"extract_features (batches in memory) / bare inference ({label})",
                ratio(times, "loop", "bare"),
                1.10,
                bare_images_per_s=n / bare_s,
                per_rep=per_rep(times, "loop", "bare"),
            )
        )
    for src_name in sources:
        workers_detail: dict[str, object] = {}
        if workers > 0:
            cpu_s = median(worker_cpu[src_name])
            workers_detail = {"worker_cpu_s": cpu_s}
        rows.append(
            at_most(
                NAME,
                f"extract_features over {src_name} / bare inference ({label})",
                ratio(times, src_name, "bare"),
                1.10,
                ours_images_per_s=n / median(times[src_name]),
                bare_images_per_s=n / bare_s,
                N=n,
                batch=batch,
                per_rep=per_rep(times, src_name, "bare"),
                **workers_detail,
            )
        )
        if workers > 0:
            rows.append(
                info(
                    NAME,
                    f"workers' CPU time / bare inference time, over {src_name} ({label})",
                    cpu_s / bare_s,
                    "x",
                )
            )
    rows.append(info(NAME, f"bare inference images/s ({label})", n / bare_s, "img/s"))
    return rows


def run(ctx: Context) -> list[Row]:
    cifar = os.environ.get("BENCH_CIFAR", "/work/shared/data/cifar10/train.tar")
    res = 32
    # 1,536 images a side in the quick run: enough for a steady ratio, small enough that the
    # whole suite stays within minutes on 2 cores.
    n, batch = ctx.pick((128, 64), (1536, 256), (16384, 256))
    rng = np.random.default_rng(0)
    arrays = ArrayCollection(rng.integers(0, 256, (n, res, res, 3), dtype=np.uint8))
    sources: dict[str, Collection] = {"ArrayCollection": arrays}
    if os.path.exists(cifar) and not ctx.tiny:
        sources["CIFAR-10 JPEG tar"] = open_collection(cifar)
    settings = [("fp32", False, 0), ("fp32", False, 1), ("bf16", True, 1)]
    if ctx.tiny:
        settings = settings[:2]  # one setting without a worker, one with
    settings, rows = without_emulated_bf16(ctx, NAME, settings)
    warmed: set[tuple[str, bool]] = set()
    for precision, cl, workers in settings:
        # In the quick run a warm-up round only for a precision and memory format not yet
        # run: the next setting's model has the same weights and shapes, so nothing is left
        # to warm (a round of the 1-worker setting took ~25 s on 2 cores).
        warmup = ctx.repeat_warmup if (precision, cl) in warmed else None
        rows += _setting(ctx, sources, n, batch, res, precision, cl, workers, warmup)
        warmed.add((precision, cl))
    return rows
