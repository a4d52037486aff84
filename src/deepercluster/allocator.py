"""Process-wide memory settings for CPU steps: glibc's malloc, and torch's huge pages.

glibc's malloc serves a request at or above its mmap threshold with a fresh ``mmap`` and
unmaps it again on ``free``. The threshold starts at 128 KiB and rises with the blocks freed,
but never above 32 MiB, and the free memory at the top of the heap is handed back to the
kernel above 2x that. A CPU training step or inference batch allocates and frees the same
activations every time, most of them above 32 MiB at useful batch sizes, so every step
faults all their pages in again and the kernel zeroes each one: on the Zen 3 EPYC of
``docs/performance.md`` (round 14) ~640,000 minor faults (2.6 GB) per 1,536 CIFAR-size
images of the small convnet's inference, 210,000-330,000 per training step of 256 images.

:func:`reuse_freed_memory` raises the mmap threshold to 1 GiB and lets the heap keep up to
1 GiB of free memory at its top (``mallopt``'s ``M_MMAP_THRESHOLD`` and
``M_TRIM_THRESHOLD``), so the next step is served from the blocks the last one freed and
faults nothing. Measured there (``python -m bench malloc``, fresh interpreters A/B): a bare
training step of 256 images at 32 px 1.34x faster (331,676 faults a step -> 2), bare
inference 1.09x; in ad-hoc runs 1.16-1.19x for that step, 1.33x for 64 images at 96 px,
1.3x for inference. The price is the process' resident size: it keeps its peak instead of
shrinking between steps, 1.2x the peak with glibc's defaults in the benchmark (1,322 ->
1,600 MiB), 1.3-1.5x in the 96 px step (1.74 -> 2.30-2.55 GB), 1.6x in a 224 px step of 16
images (2.10 -> 3.32 GB, steady from the fourth step; 6.6-7.2 -> 4.8-5.2 s a step). Blocks
of 1 GiB or more are still mapped and unmapped each time. A process that forks DataLoader
workers hands the kept heap back first (:func:`trim_before_workers`).

The settings are process-wide and inherited by forked DataLoader workers. Elsewhere than
glibc (macOS, musl) :func:`reuse_freed_memory` changes nothing and says so.

:func:`request_huge_pages` asks torch's CPU allocator for transparent huge pages (2 MiB) for
every tensor of 2 MiB or more (torch's ``THP_MEM_ALLOC_ENABLE``; numpy does the same for its
arrays of 4 MiB or more by default). Its main effect here is on ``fork``: the kernel copies a
process' page tables into every DataLoader worker it forks and tears them down when the worker
ends, one entry per 4 KiB page, ~65 ms per GiB of live tensors for a worker's start and end
on the Zen 3 EPYC of ``docs/performance.md`` (round 15); with huge pages one entry covers 2
MiB (3 GiB of live tensors: 205 -> 35 ms). A training run forks its loaders' workers every
epoch, with the model, its optimizer state and the heads alive; extraction with one worker
in the full benchmark suite read 1.06-1.16x bare inference without them (3 runs), 1.00-1.10x
with them (3 runs; 1.02x or less in two). The price is small: peak RSS 1-15% higher in the
steps measured (2 MiB granules), and no step measured slower. Torch reads the variable once,
at its first allocation, so the request must come before torch is imported:
``import deepercluster`` makes it (the command line always does). An explicit
``THP_MEM_ALLOC_ENABLE`` in the environment is left as it is (``=0`` turns them off).
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

__all__ = [
    "HUGE_PAGES_ENV",
    "REUSE_LIMIT",
    "HugePages",
    "kernel_thp_mode",
    "malloc_trim",
    "request_huge_pages",
    "reuse_freed_memory",
    "trim_before_workers",
]

#: Blocks below this size are kept for reuse, and up to this much free memory at the top of
#: the heap (bytes). 1 GiB: a 96 px training step of 64 images still faulted 110,000 pages a
#: step at 256 MiB (3.82 vs 3.69 s a step); the limit must also fit mallopt's C int.
REUSE_LIMIT = 1 << 30
# glibc's largest M_MMAP_THRESHOLD before 2.26-era releases lifted the cap (HEAP_MAX_SIZE / 2
# on 64-bit): the fallback where 1 GiB is refused.
_OLD_GLIBC_CAP = 32 << 20
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@cache
def _glibc() -> ctypes.CDLL | None:
    if platform.libc_ver()[0] != "glibc":
        return None
    # The symbols of the C library the interpreter already runs on (no library search).
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "mallopt") or not hasattr(libc, "malloc_trim"):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    return libc


def reuse_freed_memory(limit: int = REUSE_LIMIT) -> int:
    """Let glibc's malloc keep freed blocks below ``limit`` bytes for reuse (module docstring).

    Args:
        limit: mmap and trim threshold in bytes, 128 KiB to 2 GiB - 1.

    Returns:
        The mmap threshold now in force, in bytes (``limit``, or 32 MiB on an old glibc that
        refuses more), or 0 where the C library is not glibc: nothing was changed.

    Raises:
        ValueError: ``limit`` out of range.
    """
    if not (128 << 10) <= limit < (1 << 31):
        raise ValueError(
            f"limit must lie in [128 KiB, 2 GiB) (a C int of bytes), got {limit}; "
            f"the default is {REUSE_LIMIT}"
        )
    libc = _glibc()
    if libc is None:
        return 0
    for threshold in (limit, min(limit, _OLD_GLIBC_CAP)):
        if libc.mallopt(_M_MMAP_THRESHOLD, threshold) == 1:
            libc.mallopt(_M_TRIM_THRESHOLD, limit)
            return threshold
    return 0


def malloc_trim() -> bool:
    """Hand the free memory of every malloc arena back to the kernel (glibc's
    ``malloc_trim(0)``), whatever :func:`reuse_freed_memory` keeps; e.g. before measuring a
    stage's peak memory. Returns whether memory was released (False off glibc)."""
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))


def trim_before_workers(loader: object) -> None:
    """:func:`malloc_trim` if iterating ``loader`` is about to fork worker processes (a
    DataLoader with ``num_workers > 0``); nothing otherwise.

    A forked worker shares every page of the parent until one side writes it. The heap that
    :func:`reuse_freed_memory` keeps is where the parent's next batch writes its activations,
    so that batch would copy each page it touches (a fault and a 4 KiB copy) instead of reusing
    it, and the fork itself copies the page tables of all of it. Handed back first, the
    pages fault in as zero pages, once, and the fork is cheaper: extraction with one worker
    over 1,536 CIFAR-size images, with ~1 GB of freed heap kept, read 1.24x bare inference
    without the trim and 1.12x with it (docs/performance.md, round 14).
    """
    if getattr(loader, "num_workers", 0) > 0:
        malloc_trim()


#: torch's switch for transparent huge pages in its CPU allocator: "1" on, anything else off.
HUGE_PAGES_ENV = "THP_MEM_ALLOC_ENABLE"
_THP_MODE_FILE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


@dataclass(frozen=True)
class HugePages:
    """Whether torch's CPU allocator asks for transparent huge pages in this process.

    Attributes:
        on: tensors of 2 MiB or more are advised to the kernel as huge-page memory.
        reason: why, in words for the log, with the way to change it when off.
    """

    on: bool
    reason: str


_request: HugePages | None = None


def kernel_thp_mode(path: Path = _THP_MODE_FILE) -> str | None:
    """The kernel's transparent huge page mode: "always", "madvise" (only memory advised for
    them, as torch's allocator does) or "never"; None where the kernel has none (not Linux,
    or built without them). Reads any file of that directory written the same way, e.g.
    ``defrag`` (whose choices include "defer+madvise")."""
    try:
        text = path.read_text()
    except OSError:
        return None
    chosen = re.search(r"\[([^\]]+)\]", text)
    return chosen.group(1) if chosen else None


def request_huge_pages() -> HugePages:
    """Ask torch's CPU allocator for transparent huge pages (module docstring), if it can still
    take the request, and say what is in force. Called by ``import deepercluster``; later
    calls return the first call's answer.

    Sets ``THP_MEM_ALLOC_ENABLE=1`` in this process' environment (inherited by its workers)
    only when the variable is unset, torch is not imported yet, and the kernel offers huge
    pages.
    """
    global _request
    if _request is None:
        _request = _decide_huge_pages(kernel_thp_mode())
    return _request


def _decide_huge_pages(mode: str | None) -> HugePages:
    if mode not in ("always", "madvise"):
        return HugePages(False, f"the kernel offers no transparent huge pages (mode: {mode})")
    value = os.environ.get(HUGE_PAGES_ENV)
    if value is not None:
        return HugePages(value == "1", f"{HUGE_PAGES_ENV}={value} in the environment")
    if "torch" in sys.modules:
        return HugePages(
            False,
            f"torch was imported before deepercluster; set {HUGE_PAGES_ENV}=1 in the "
            "environment, or import deepercluster first",
        )
    os.environ[HUGE_PAGES_ENV] = "1"
    return HugePages(True, f"{HUGE_PAGES_ENV}=1 set by deepercluster before torch was imported")
