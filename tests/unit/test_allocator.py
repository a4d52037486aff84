"""allocator.reuse_freed_memory: freed blocks are reused instead of faulted in again.

The settings are process-wide, so each case runs in a fresh interpreter and counts the
minor page faults of its own loop.
"""

from __future__ import annotations

import platform

import pytest
from tests.conftest import run_fresh_python

from deepercluster import allocator
from deepercluster.allocator import REUSE_LIMIT, malloc_trim, reuse_freed_memory

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")

# Allocates, fills and frees a 64 MiB tensor (above glibc's largest dynamic mmap threshold,
# 32 MiB) eight times, as a step does its activations; prints the threshold set and the
# faults of the last four rounds (the heap may still be settling in the first ones). A torch
# tensor, not a numpy array: numpy asks for transparent huge pages, 2 MiB a fault, so its
# faults would not count the pages. For the same reason torch is imported first and the
# interpreter gets no THP_MEM_ALLOC_ENABLE: torch's huge pages stay off (test_huge_pages.py).
_LOOP = """
import json, resource, sys
import torch
from deepercluster.allocator import reuse_freed_memory
kept = reuse_freed_memory() if sys.argv[1] == "reuse" else -1
faults = []
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.ones(16 << 20)  # 64 MiB of float32, every page written
    del block
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"kept": kept, "faults": faults[4:]}))
"""

_PAGES = (64 << 20) // 4096


@glibc_only
def test_default_malloc_faults_every_round_and_reuse_faults_none() -> None:
    default, reused = run_fresh_python(_LOOP, "default"), run_fresh_python(_LOOP, "reuse")
    # glibc maps and unmaps the block each round: all of its pages fault again.
    assert all(f >= 0.9 * _PAGES for f in default["faults"])  # type: ignore[attr-defined]
    assert reused["kept"] == REUSE_LIMIT
    # The block comes back from the heap: no page faults once the heap holds it.
    assert all(f < 0.02 * _PAGES for f in reused["faults"])  # type: ignore[attr-defined]


@pytest.mark.parametrize("limit", [0, 1000, 1 << 31])
def test_limit_out_of_range_is_refused(limit: int) -> None:
    with pytest.raises(ValueError, match="limit must lie in"):
        reuse_freed_memory(limit)


@pytest.mark.skipif(platform.libc_ver()[0] == "glibc", reason="for other C libraries")
def test_other_c_libraries_are_left_alone() -> None:
    assert reuse_freed_memory() == 0
    assert malloc_trim() is False


# Keeps a freed 256 MiB tensor in the heap, then hands it back; prints the resident MiB of
# the process before the tensor, after its free, and after malloc_trim. The modules named in
# argv[1] are imported first: deepercluster first gives torch's huge pages, as a run has them.
_TRIM = """
import json, sys
for name in sys.argv[1].split(","):
    __import__(name)
import torch
from deepercluster.allocator import malloc_trim, reuse_freed_memory
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 >> 20
reuse_freed_memory()
base = rss()
block = torch.ones(64 << 20)
del block
kept = rss()
print(json.dumps({"base": base, "kept": kept, "trimmed": rss() if malloc_trim() else -1}))
"""


@glibc_only
@pytest.mark.parametrize("order", ["torch,deepercluster", "deepercluster,torch"])
def test_malloc_trim_hands_the_kept_heap_back(order: str) -> None:
    rss = run_fresh_python(_TRIM, order)
    assert rss["kept"] - rss["base"] >= 240  # the freed 256 MiB stayed resident
    assert rss["trimmed"] >= 0 and abs(rss["trimmed"] - rss["base"]) < 16  # and went back


class _Loader:
    def __init__(self, num_workers: int) -> None:
        self.num_workers = num_workers


@pytest.mark.parametrize(("loader", "trims"), [(_Loader(2), 1), (_Loader(0), 0), ([1, 2], 0)])
def test_heap_is_trimmed_only_before_forking_workers(
    loader: object, trims: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[None] = []
    monkeypatch.setattr(allocator, "malloc_trim", lambda: calls.append(None) or True)
    allocator.trim_before_workers(loader)
    assert len(calls) == trims
