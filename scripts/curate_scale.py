"""Benchmark: curate 10^6 embeddings on the CPU with the embeddings on disk and memory bounded.

Writes N random unit vectors of dimension d (default 10^6 x 128) with planted near-duplicates
(a share of the rows are copies of others plus noise, cosine about 0.98) into a
:class:`~deepercluster.cluster.store.FeatureStore` chunk by chunk, clusters them the way a run
would have (k-means centroids fitted on a sample, every row assigned to its nearest one; a
stand-in for the run's own clustering, timed apart), then runs the production selection
(:func:`deepercluster.curate.select.select`: de-duplication in bounded memory, water-filling)
and writes its four files. Reports wall times, peak resident memory (VmHWM, reset before the
curation) against ``--max-memory``, and the planted pairs found and the false merges.

Usage::

    nice -n 10 python scripts/curate_scale.py --images 1000000 --out results/curate_scale.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from deepercluster.cli.cpu import set_wait_policy

# Before torch loads: idle OpenMP threads then sleep instead of spinning on a shared machine,
# where spinning threads slow the many small similarity blocks down many times over.
set_wait_policy()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from deepercluster.cluster import assign, kmeans  # noqa: E402
from deepercluster.cluster.store import FeatureStore  # noqa: E402
from deepercluster.config.sections import parse_size  # noqa: E402
from deepercluster.curate.lists import write_curation  # noqa: E402
from deepercluster.curate.measure import planted_duplicates  # noqa: E402
from deepercluster.curate.select import select  # noqa: E402
from deepercluster.curate.settings import CurateSettings  # noqa: E402


def _reset_peak() -> None:
    # Writing 5 to clear_refs resets VmHWM (Linux), so the peak is the curation's own.
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _write_pool(store: FeatureStore, share: float, noise: float, seed: int) -> np.ndarray:
    """Fill ``store`` with random unit rows; returns (N,) the original of each planted copy
    (-1 for an original). A copy's original is an earlier row of the same chunk."""
    rng = np.random.default_rng(seed)
    source = np.full(store.rows, -1, dtype=np.int64)
    for chunk in range(store.n_chunks):
        lo, hi = store.chunk_range(chunk)
        x = rng.standard_normal((hi - lo, store.dim)).astype(np.float32)
        copies = np.flatnonzero(rng.random(hi - lo) < share)
        copies = copies[copies > 0]
        originals = (rng.random(len(copies)) * copies).astype(np.int64)  # an earlier row
        originals = originals[np.isin(originals, copies, invert=True)]  # no chains of copies
        copies = copies[: len(originals)]
        x[copies] = x[originals] + noise * rng.standard_normal((len(copies), store.dim))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        source[lo + copies] = lo + originals
        store.write_chunk(chunk, x)
    return source


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--k", type=int, default=1000, help="sub-clusters (in --m super-clusters)")
    p.add_argument("--m", type=int, default=10)
    p.add_argument("--size", type=int, default=200_000, help="curated subset")
    default = CurateSettings(size=1)
    p.add_argument("--dedup", type=float, default=default.dedup)
    p.add_argument("--dedup-neighbours", type=int, default=default.dedup_neighbours)
    p.add_argument("--share", type=float, default=0.05, help="share of planted copies")
    p.add_argument("--noise", type=float, default=0.01, help="per-coordinate copy noise")
    p.add_argument("--max-memory", default="256MB")
    p.add_argument("--sample", type=int, default=50_000, help="rows k-means is fitted on")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="results/curate_scale.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    record: dict[str, Any] = {"config": vars(args), "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory(prefix="curate-scale-") as tmp:
        tic = time.perf_counter()
        store = FeatureStore(Path(tmp) / "emb", rows=args.images, dim=args.dim, chunk_rows=65536)
        source = _write_pool(store, args.share, args.noise, seed=0)
        record["write_s"] = time.perf_counter() - tic

        # Stand-in for the run's clustering: centroids from a sample, every row assigned.
        tic = time.perf_counter()
        rng = np.random.default_rng(1)
        sample = store.take(np.sort(rng.choice(args.images, args.sample, replace=False)))
        centroids = kmeans(sample, args.k, niter=10, seed=0).centroids
        labels = np.empty(args.images, np.int64)
        for start, rows in store.blocks(65536):
            labels[start : start + len(rows)] = assign(rows, centroids)[0]
        record["clustering_standin_s"] = time.perf_counter() - tic
        del sample

        settings = CurateSettings(
            size=args.size, dedup=args.dedup, dedup_neighbours=args.dedup_neighbours,
            max_memory=parse_size(args.max_memory),
        )  # fmt: skip
        per_super = args.k // args.m
        _reset_peak()
        rss_before = _peak_bytes()
        tic = time.perf_counter()
        cur = select(store, labels, centroids, np.arange(args.k) // per_super, settings)
        record["select_s"] = time.perf_counter() - tic
        tic = time.perf_counter()
        paths = [f"img/{i:07d}.jpg" for i in range(args.images)]
        write_curation(cur, paths, Path(tmp) / "curated.csv", pick=settings.pick, summary={})
        record["write_lists_s"] = time.perf_counter() - tic
        record["curate_s"] = record["select_s"] + record["write_lists_s"]
        record["peak_rss_bytes"] = _peak_bytes()
        record["rss_at_start_bytes"] = rss_before
        record["max_memory_bytes"] = settings.max_memory
        record["embeddings_bytes"] = store.nbytes

        record["planted"] = planted_duplicates(cur.group, source)
        record |= {
            "pairs_compared": cur.compared,
            "counts": cur.counts(),
        }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    print(json.dumps(record, indent=1))
    os.sync()


if __name__ == "__main__":
    main()
