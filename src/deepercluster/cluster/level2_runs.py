"""The m level-2 k-means of a hierarchy, one after the other or side by side in threads.

The level-2 problems are independent (paper [0] section 3 runs them on separate process
groups). In one process they can run in threads: faiss and the numpy/scipy kernels release
the GIL, and OpenMP's thread count is per calling thread, so each run gets its share of the
cores. Results are assembled in super-cluster order, so they do not depend on the schedule.

References:
    - [0] DeeperCluster: Caron et al., ICCV 2019, https://arxiv.org/abs/1905.01278
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import TypeVar

import faiss

from deepercluster.cluster.kmeans import faiss_threads

__all__ = ["level2_workers", "run_level2"]

T = TypeVar("T")


def level2_workers(m: int, threads: int) -> int:
    """How many level-2 k-means one process runs at once, each on ``threads // workers`` threads.

    A level-2 problem is small next to the whole (N/m rows, k/m centroids): one run on all
    cores leaves most of them idle in its small products and its serial steps, while
    concurrent runs on fewer threads each keep them busy (bench/kmeans.py, 16-way hierarchy
    on 2 cores: level 2 ~25% faster with 2 runs of 1 thread). Every run in flight holds its
    rows in float32 and float64 (12 bytes a value), so at most m // 3 run at once: together
    no more memory than the features themselves.

    Args:
        m: number of super-clusters.
        threads: OpenMP threads the hierarchy may use.

    Returns:
        Runs at once, >= 1.
    """
    return max(1, min(threads, m // 3))


def run_level2(
    level2: Callable[[int], T],
    m: int,
    workers: int | None,
    on_level_done: Callable[[int, int], None] | None,
) -> list[T]:
    """``[level2(s) for s in range(m)]``, up to ``workers`` at a time.

    Args:
        level2: the run of super-cluster s; thread-safe when ``workers`` > 1.
        m: number of super-clusters.
        workers: runs at once (None: :func:`level2_workers` of faiss' current thread count);
            each gets ``threads // workers`` faiss threads.
        on_level_done: progress ``(runs done + 1, m + 1)`` after each run (level 1 is the first
            of the m + 1), called from this thread as runs end.

    Returns:
        The m results in super-cluster order. If a run raises, runs not yet started are
        dropped, the ones in flight finish, and the first error is raised.
    """
    threads = faiss.omp_get_max_threads()
    workers = level2_workers(m, threads) if workers is None else min(max(workers, 1), m)
    if workers == 1:
        in_order = []
        for s in range(m):
            in_order.append(level2(s))
            if on_level_done is not None:
                on_level_done(s + 2, m + 1)
        return in_order

    def in_thread(s: int) -> T:
        # OpenMP's thread count is per calling thread: each run gets its share of the cores.
        with faiss_threads(max(1, threads // workers)):
            return level2(s)

    with ThreadPoolExecutor(workers, thread_name_prefix="level2-kmeans") as pool:
        futures: dict[Future[T], int] = {pool.submit(in_thread, s): s for s in range(m)}
        results: dict[int, T] = {}
        try:
            for done, future in enumerate(as_completed(futures), start=2):
                results[futures[future]] = future.result()
                if on_level_done is not None:
                    on_level_done(done, m + 1)
        except BaseException:
            # Runs not started are dropped; the ones in flight finish (a run store keeps them).
            for future in futures:
                future.cancel()
            raise
    return [results[s] for s in range(m)]
