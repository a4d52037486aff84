"""glibc's malloc defaults vs ``allocator.reuse_freed_memory``: the lever behind every CPU step.

With glibc's defaults, blocks above its mmap threshold (at most 32 MiB) are mapped for each
allocation and unmapped on free, so every inference batch and training step faults its
activations' pages in again; ``train.reuse_memory`` (the default) keeps them in the heap. The
setting is process-wide and cannot be undone in a process, so each side runs in a fresh
interpreter of its own (spawned, with this process' torch threads), and the two are called in
turn, A, B, A, B, as ``interleaved`` does within a process. Each call times bare fp32
inference of the small convnet over CIFAR-size batches and bare training steps (forward,
backward, SGD) of the same network with a linear head, and counts the minor page faults of
the call and the resident set size at its end (the peak of the process so far).
"""

from __future__ import annotations

import multiprocessing
import resource
import time
from concurrent.futures import ProcessPoolExecutor

import torch

from bench.common import Context, Row, info, median
from deepercluster.allocator import reuse_freed_memory
from deepercluster.models import build_backbone

NAME = "malloc"
_SIDES = ("defaults", "reuse")


def _child_settings(threads: int, reuse: bool) -> None:
    torch.set_num_threads(threads)
    if reuse:
        reuse_freed_memory()


def _measure(res: int, images: int, batch: int, steps: int, step_batch: int) -> dict[str, float]:
    """Seconds, minor faults and peak RSS of bare inference over ``images`` and of ``steps``
    training steps of ``step_batch`` images, in this process."""
    torch.manual_seed(0)
    model = build_backbone("small", sobel=True, resolution=res)
    head = torch.nn.Linear(model.feature_dim, 100)
    params = [*model.parameters(), *head.parameters()]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    x = torch.randn(images, 3, res, res)
    y = torch.randint(0, 100, (step_batch,))

    def faults() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    out: dict[str, float] = {}
    model.eval()
    f0, tic = faults(), time.perf_counter()
    with torch.no_grad():
        for start in range(0, images, batch):
            model(x[start : start + batch])
    out["infer_s"], out["infer_faults"] = time.perf_counter() - tic, faults() - f0
    model.train()
    f0, tic = faults(), time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(head(model(x[:step_batch])), y)
        loss.backward()
        opt.step()
    out["step_s"], out["step_faults"] = (time.perf_counter() - tic) / steps, faults() - f0
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run(ctx: Context) -> list[Row]:
    if ctx.device.type != "cpu":
        return [info(NAME, "skipped: the malloc settings concern CPU steps", 0.0, "")]
    res = 32
    images, batch, steps, step_batch = ctx.pick(
        (64, 32, 1, 16), (768, 256, 2, 256), (3072, 256, 4, 256)
    )
    spawn = multiprocessing.get_context("spawn")
    pools = {
        side: ProcessPoolExecutor(
            1,
            mp_context=spawn,
            initializer=_child_settings,
            initargs=(torch.get_num_threads(), side == "reuse"),
        )
        for side in _SIDES
    }
    try:
        shape = (res, images, batch, steps, step_batch)
        for side in _SIDES:  # start the interpreters, warm the model
            pools[side].submit(_measure, *shape).result()
        runs: dict[str, list[dict[str, float]]] = {side: [] for side in _SIDES}
        for _ in range(ctx.reps):
            for side in _SIDES:
                runs[side].append(pools[side].submit(_measure, *shape).result())
    finally:
        for pool in pools.values():
            pool.shutdown()

    def ratios(key: str) -> list[float]:
        return [
            round(a[key] / b[key], 4) for a, b in zip(runs["defaults"], runs["reuse"], strict=True)
        ]

    def med(side: str, key: str) -> float:
        return median([r[key] for r in runs[side]])

    rows = []
    for key, what, n in (
        ("infer", "bare inference", images),
        ("step", "bare training step", step_batch),
    ):
        rows.append(
            info(
                NAME,
                f"{what}, glibc malloc defaults / freed memory kept (time, {res} px)",
                median(ratios(f"{key}_s")),
                "x",
                defaults_s=med("defaults", f"{key}_s"),
                reuse_s=med("reuse", f"{key}_s"),
                faults_defaults=med("defaults", f"{key}_faults"),
                faults_reuse=med("reuse", f"{key}_faults"),
                per_rep=ratios(f"{key}_s"),
                images=n,
            )
        )
    rows.append(
        info(
            NAME,
            "peak resident memory, freed memory kept / glibc malloc defaults",
            med("reuse", "peak_rss_mib") / med("defaults", "peak_rss_mib"),
            "x",
            defaults_mib=med("defaults", "peak_rss_mib"),
            reuse_mib=med("reuse", "peak_rss_mib"),
        )
    )
    return rows
