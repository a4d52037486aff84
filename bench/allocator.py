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

Then torch's huge pages (``allocator.request_huge_pages``, on in both interpreters above), off
against on, in two more fresh interpreters (torch reads its switch once, at its first
allocation): each holds the same live tensors, as a training process holds its model,
optimizer state and heads, and times a ``fork`` whose child exits at once, waited for: what
every DataLoader worker's start and end cost in page tables.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import time
from concurrent.futures import ProcessPoolExecutor

import torch

from bench.common import Context, Row, info, median
from deepercluster.allocator import HUGE_PAGES_ENV, request_huge_pages, reuse_freed_memory
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


_live: list[torch.Tensor] = []  # the live tensors of a fork-timing interpreter


def _fork_seconds(live_mib: int, forks: int) -> dict[str, float]:
    """Median seconds of ``forks`` forks of this process, holding ``live_mib`` MiB of written
    tensors (in 64 MiB pieces), whose child exits at once, waited for; and whether torch
    asks for huge pages here."""
    while sum(t.numel() * 4 for t in _live) < live_mib << 20:
        _live.append(torch.ones(16 << 20))  # 64 MiB of float32, every page written
    times = []
    for _ in range(forks):
        tic = time.perf_counter()
        pid = os.fork()
        if pid == 0:  # the child: no Python clean-up, as a finished worker's exit
            os._exit(0)
        os.waitpid(pid, 0)
        times.append(time.perf_counter() - tic)
    return {"fork_s": median(times), "huge_pages": float(request_huge_pages().on)}


def _fork_rows(ctx: Context, spawn: multiprocessing.context.SpawnContext) -> list[Row]:
    """Fork and exit with live tensors, torch's huge pages off / on, in fresh interpreters."""
    live_mib, forks = ctx.pick((256, 3), (1024, 5), (3072, 5))
    pools: dict[str, ProcessPoolExecutor] = {}
    before = os.environ.get(HUGE_PAGES_ENV)
    try:
        for side, value in (("off", "0"), ("on", "1")):
            # A spawned interpreter takes this environment when it starts, at the first submit.
            os.environ[HUGE_PAGES_ENV] = value
            pools[side] = ProcessPoolExecutor(
                1,
                mp_context=spawn,
                initializer=_child_settings,
                initargs=(torch.get_num_threads(), True),
            )
            pools[side].submit(_fork_seconds, live_mib, 1).result()
    finally:
        if before is None:
            os.environ.pop(HUGE_PAGES_ENV, None)
        else:
            os.environ[HUGE_PAGES_ENV] = before
    try:
        runs: dict[str, list[dict[str, float]]] = {side: [] for side in pools}
        for _ in range(ctx.reps):
            for side, pool in pools.items():
                runs[side].append(pool.submit(_fork_seconds, live_mib, forks).result())
    finally:
        for pool in pools.values():
            pool.shutdown()
    off = [r["fork_s"] for r in runs["off"]]
    on = [r["fork_s"] for r in runs["on"]]
    return [
        info(
            NAME,
            f"fork + exit of a process with {live_mib} MiB of tensors, huge pages off / on",
            median([a / b for a, b in zip(off, on, strict=True)]),
            "x",
            off_s=median(off),
            on_s=median(on),
            # 0 where the kernel has no huge pages: then both sides are the same.
            on_side_asks=runs["on"][0]["huge_pages"],
            per_rep=[round(a / b, 4) for a, b in zip(off, on, strict=True)],
            live_mib=live_mib,
        )
    ]


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
    return rows + _fork_rows(ctx, spawn)
