"""Shared pieces of the benchmark suite: the run context, timing, memory and result rows.

Every figure is the median of several repetitions after warm-up. Two things compared in a
ratio are timed *interleaved* (A, B, A, B, ...) in the same process, so that load from other
processes on a shared machine hits both sides alike; the ratio is the median of the
per-repetition ratios.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import torch

from deepercluster.features import native_bf16

SettingT = TypeVar("SettingT", bound=tuple[Any, ...])


@dataclass(frozen=True)
class Context:
    """How a benchmark runs.

    Attributes:
        device: where the torch work runs (``cpu`` or ``cuda``).
        size: ``tiny`` (CI smoke test: seconds), ``quick`` (minutes on 2 cores) or ``full``.
        reps: timed repetitions per figure (the median is reported).
        warmup: untimed repetitions first.
    """

    device: torch.device
    size: str = "quick"
    reps: int = 5
    warmup: int = 1

    @property
    def tiny(self) -> bool:
        return self.size == "tiny"

    @property
    def full(self) -> bool:
        return self.size == "full"

    @property
    def repeat_warmup(self) -> int | None:
        """Warm-up rounds of a round whose code has just run at another shape or with another
        model of the same shapes: none in the tiny and quick runs (the quick suite's 10
        minutes on 2 cores), ``warmup`` (None) in the full one. For ``interleaved``."""
        return None if self.full else 0

    def pick(self, tiny: Any, quick: Any, full: Any) -> Any:
        """The value for this run's size."""
        return {"tiny": tiny, "quick": quick, "full": full}[self.size]


@dataclass
class Row:
    """One reported figure.

    Attributes:
        bench: benchmark name (``train``, ``heads``, ...).
        name: what is measured.
        value: the figure.
        unit: its unit (``x`` for ratios).
        target: the acceptance bound in words, e.g. ``<= 1.10``; empty when informative only.
        ok: whether ``value`` meets ``target`` (None without a target).
        detail: the raw numbers behind a ratio, shapes, notes.
    """

    bench: str
    name: str
    value: float
    unit: str
    target: str = ""
    ok: bool | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def at_most(bench: str, name: str, value: float, bound: float, **detail: Any) -> Row:
    """A ratio row whose target is ``value <= bound``."""
    return Row(bench, name, value, "x", f"<= {bound:g}", value <= bound, detail)


def at_least(bench: str, name: str, value: float, bound: float, **detail: Any) -> Row:
    """A ratio row whose target is ``value >= bound``."""
    return Row(bench, name, value, "x", f">= {bound:g}", value >= bound, detail)


def info(bench: str, name: str, value: float, unit: str, **detail: Any) -> Row:
    """A figure without a target."""
    return Row(bench, name, value, unit, "", None, detail)


def format_value(value: float, unit: str) -> str:
    """A figure as the tables print it: ratios to two decimals (``7.85x``), others to three
    significant digits with their unit (``399 img/s``)."""
    return f"{value:.2f}x" if unit == "x" else f"{value:.3g} {unit}"


def without_emulated_bf16(
    ctx: Context, bench: str, settings: list[SettingT]
) -> tuple[list[SettingT], list[Row]]:
    """``settings`` (tuples whose first item is the precision) less the bf16 ones where bf16
    is emulated, and the row saying so ([] when nothing is left out).

    Where the device has no native bf16 (an AVX2-only CPU) autocast emulates it: the bf16
    training step ran at 0.08x the fp32 step's speed on an AMD EPYC (Zen 3), and its rows alone
    would take the suite past its 10 minutes. ``BENCH_BF16=1`` runs them anyway.
    """
    if ctx.tiny or native_bf16(ctx.device) or os.environ.get("BENCH_BF16") == "1":
        return settings, []
    why = f"bf16 rows skipped: no native bf16 on this {ctx.device.type} (BENCH_BF16=1 runs them)"
    return [s for s in settings if s[0] != "bf16"], [info(bench, why, 0.0, "")]


def sync(device: torch.device) -> None:
    """Wait for queued device work: CUDA kernels are asynchronous, timings must not be."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes, device work included."""
    sync(device)
    tic = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - tic


def interleaved(
    fns: dict[str, Callable[[], object]],
    ctx: Context,
    *,
    reps: int | None = None,
    warmup: int | None = None,
) -> dict[str, list[float]]:
    """Time several functions A, B, A, B, ... after ``ctx.warmup`` untimed rounds.

    Args:
        fns: what to time, by name.
        ctx: the run's context (device, repetitions, warm-up rounds).
        reps: timed rounds instead of ``ctx.reps``.
        warmup: untimed rounds instead of ``ctx.warmup`` (0 where the same functions have
            just run at another shape, so that nothing is left to warm but memory).

    Returns:
        The seconds of every timed call, per name, in repetition order.
    """
    for _ in range(ctx.warmup if warmup is None else warmup):
        for fn in fns.values():
            fn()
    sync(ctx.device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps or ctx.reps):
        for name, fn in fns.items():
            times[name].append(timed(fn, ctx.device))
    return times


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def _ratios(times: dict[str, list[float]], ours: str, limit: str) -> list[float]:
    """ours / limit of every repetition (each repetition's pair ran back to back)."""
    return [a / b for a, b in zip(times[ours], times[limit], strict=True)]


def per_rep(times: dict[str, list[float]], ours: str, limit: str) -> list[float]:
    """The per-repetition ratios behind :func:`ratio`, rounded for the JSON.

    Rows keep these beside their median: on a shared machine a figure near its target can
    read either side of it, and the spread says how far to trust one reading.
    """
    return [round(r, 4) for r in _ratios(times, ours, limit)]


def ratio(times: dict[str, list[float]], ours: str, limit: str) -> float:
    """Median over repetitions of ours / limit."""
    return median(_ratios(times, ours, limit))


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run a block with ``n`` intra-op torch threads, then restore the previous count."""
    if n is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class SavedTensorBytes:
    """Bytes autograd keeps for the backward pass, counted without the allocator.

    Inside the ``with`` block every tensor saved for backward passes through
    ``torch.autograd.graph.saved_tensors_hooks``; we record its storage (deduplicated by
    data pointer, since a view saved twice costs its storage once) and return it unchanged.
    This is the activation memory of a step on any device, independent of caching
    allocators; parameters saved by the graph (weights) are excluded, they are not
    activations.
    """

    def __init__(self, exclude: list[torch.Tensor]) -> None:
        self._exclude = {p.untyped_storage().data_ptr() for p in exclude}
        self._seen: dict[int, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self._exclude:
            self._seen[ptr] = storage.nbytes()
        return t

    def __enter__(self) -> SavedTensorBytes:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)

    @property
    def nbytes(self) -> int:
        return sum(self._seen.values())


def machine(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on: CPU, threads, versions, load, GPU."""
    import faiss
    import numpy as np
    import PIL

    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    out: dict[str, Any] = {
        "cpu": fields.get("model name", platform.processor()),
        # "AMD EPYC" names several generations: family and model tell them apart (25/1 is
        # Zen 3, AVX2 only; 25/17 Zen 4, with AVX-512 and bf16).
        "cpu_family_model": f"{fields.get('cpu family', '?')}/{fields.get('model', '?')}",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": native_bf16(device),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "faiss_threads": faiss.omp_get_max_threads(),
        "device": str(device),
        "loadavg_1_5_15": list(os.getloadavg()),
        # How idle OpenMP threads wait: on a shared, oversubscribed machine PASSIVE avoids
        # threads spinning on cores another process needs (see docs/performance.md).
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", ""),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", ""),
    }
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out
