"""Many small products on the CPU through numpy's OpenBLAS, and a once-per-shape timing choice.

At B = 256 each of the heads' 16 sub-heads sees ~16 rows, and its products, (16, 512) against
(512, 10,000), run far below the arithmetic peak; how far depends on the BLAS and the CPU. On
an AMD EPYC (Zen 3, 2 cores) torch's BLAS (MKL) took the logits of 16 such sub-heads in 50-82
ms, numpy's OpenBLAS in 28-40 ms; on the Intel Xeon of earlier rounds MKL, with the product
in feature slices, was the one tuned. Which is faster is a property of the machine, so the
caller times both on its first real operands (:func:`fastest`) and keeps the faster one for
the process, as ``torch.backends.cudnn.benchmark`` does for convolutions.

OpenBLAS runs here single-threaded, one sub-head per thread of a small pool (:func:`each`):
its own worker threads, after a multi-threaded call, spin for a while, and the convolutions
that followed one ran 1.4x slower (AMD EPYC, measured), where one thread per sub-head leaves
nothing spinning. The thread count is torch's (``torch.get_num_threads()``), so the pool never
uses more cores than torch's own products would.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from threadpoolctl import ThreadpoolController  # type: ignore[import-untyped]
from torch import Tensor

from deepercluster.log import get_logger

__all__ = ["available", "choices", "each", "fastest", "forced", "forget", "ndarray"]

T = TypeVar("T")

# Set to a candidate's name ("torch", "openblas") to skip the timing: e.g. to keep a resumed
# run on the BLAS it started with (the two round differently).
PIN_ENV = "DEEPERCLUSTER_CPU_BLAS"

# Choices made so far: key -> candidate name. Per process; a new shape or thread count is
# timed again.
_choices: dict[tuple[object, ...], str] = {}
_forced: str | None = None


@cache
def _numpy_openblas() -> Any | None:
    """threadpoolctl's handle on the OpenBLAS that numpy calls, or None if numpy's BLAS is not
    an OpenBLAS this process can find (MKL, Accelerate, a static build): then the pool would
    run a BLAS whose threads it cannot limit, and callers keep torch's products."""
    numpy_dir = Path(np.__file__).resolve().parent
    libs = [
        lib
        for lib in ThreadpoolController().select(internal_api="openblas").lib_controllers
        # numpy's Linux wheels put it beside the package (numpy.libs); scipy's and faiss' own
        # OpenBLAS builds (scipy.libs, faiss_cpu.libs) are not the one np.matmul calls.
        # Elsewhere (macOS' numpy/.dylibs, a system numpy) it is not found, and the heads keep
        # torch's products. Only the pthreads build: an OpenMP one limits its threads per
        # calling thread, which would leave the pool's threads unlimited.
        if Path(lib.filepath).resolve().parent in (numpy_dir, numpy_dir.parent / "numpy.libs")
        and getattr(lib, "threading_layer", None) == "pthreads"
    ]
    if len(libs) != 1:
        return None
    return ThreadpoolController().select(filepath=libs[0].filepath)


def available() -> bool:
    """Whether :func:`each` can run numpy's OpenBLAS one thread per task."""
    return _numpy_openblas() is not None


def ndarray(t: Tensor) -> np.ndarray:
    """A numpy view of CPU tensor ``t`` (no copy; autograd history dropped)."""
    return t.detach().numpy()


def each(run: Callable[[T], object], items: Iterable[T]) -> None:
    """``run(item)`` for every item, on torch's thread count of Python threads, with numpy's
    OpenBLAS single-threaded for the duration (its previous setting is restored).

    ``run`` should spend its time in numpy calls that release the GIL (``np.matmul``), and
    tasks must not write the same memory. Exceptions propagate.
    """
    controller = _numpy_openblas()
    if controller is None:
        raise RuntimeError("numpy's OpenBLAS was not found; check cpu_blas.available() first")
    threads = max(1, torch.get_num_threads())
    with controller.limit(limits=1):
        # The limit can be refused (threadpoolctl lets only one thread control OpenBLAS'
        # pthreads count): then OpenBLAS keeps its own threads, and the tasks run one after
        # another here rather than each on all of them.
        if threads == 1 or controller.info()[0]["num_threads"] != 1:
            for item in items:
                run(item)
            return
        with ThreadPoolExecutor(threads, thread_name_prefix="cpu-blas") as pool:
            for _ in pool.map(run, items):
                pass


def fastest(key: tuple[object, ...], candidates: Mapping[str, Callable[[], object]]) -> str:
    """Name of the fastest candidate for ``key``, timed on first use and remembered.

    Every candidate must do the same work with the same result (they are run for real: the
    last one run leaves its output), and be safe to repeat. Each runs three times,
    interleaved; the shortest time of each decides (the shortest is the least disturbed by
    other work on a shared machine). :func:`forced`, or the environment variable
    ``DEEPERCLUSTER_CPU_BLAS`` set to a candidate's name, overrides the choice.
    """
    pinned = _forced or os.environ.get(PIN_ENV) or None
    if pinned is not None and pinned in candidates:
        return pinned
    key = (*key, torch.get_num_threads())
    name = _choices.get(key)
    if name is not None and name in candidates:
        return name
    best: dict[str, float] = {}
    for _ in range(3):
        for candidate, run in candidates.items():
            start = time.perf_counter()
            run()
            elapsed = time.perf_counter() - start
            best[candidate] = min(best.get(candidate, elapsed), elapsed)
    name = min(best, key=lambda c: best[c])
    _choices[key] = name
    timings = ", ".join(f"{c} {1e3 * s:.1f} ms" for c, s in best.items())
    get_logger("models").info("CPU products %s: %s (%s)", key, name, timings)
    return name


@contextmanager
def forced(name: str | None) -> Iterator[None]:
    """Within the block, :func:`fastest` returns ``name`` whenever it is a candidate (None:
    choose by timing). For tests and for benchmarks that compare the candidates."""
    global _forced
    previous, _forced = _forced, name
    try:
        yield
    finally:
        _forced = previous


def choices() -> dict[str, str]:
    """The choices made so far in this process, as {key: candidate} (for logs and benchmarks)."""
    return {" ".join(map(str, key)): name for key, name in _choices.items()}


def forget() -> None:
    """Drop every remembered choice (the next call of each key times its candidates again)."""
    _choices.clear()
