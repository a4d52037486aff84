"""Time the HTML report for many clusters on a synthetic run (no network, no extraction).

What is timed: everything ``deepercluster inspect`` does after the features are known (they
are extracted once per checkpoint and cached): cluster cards (nearest and random members),
over-represented tags, thumbnails (JPEG, generated once and cached), figures and HTML pages.
The synthetic run has ``--per-cluster`` images per cluster (random 32x32 pictures, random
distances, 20 tags per image out of 500) in m = 8 super-clusters.

    python scripts/report_timing.py --k 1000 --out /tmp/report-1k
    python scripts/report_timing.py --k 10000 --out /tmp/report-10k
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from deepercluster.data import ArrayCollection
from deepercluster.evaluation.tags import TagPairs, overrepresented
from deepercluster.inspect.report import ReportOptions, cluster_cards, render_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=1000, help="number of clusters")
    parser.add_argument("--m", type=int, default=8, help="number of super-clusters")
    parser.add_argument("--per-cluster", type=int, default=12, help="images per cluster")
    parser.add_argument("--out", type=Path, required=True, help="report folder (replaced)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    k, n = args.k, args.k * args.per_cluster
    images = rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.permutation(np.arange(n) % k)
    per_super = k // args.m
    distances = rng.random(n).astype(np.float32)
    vocab = [f"tag{i}" for i in range(500)]
    image_tags = [[vocab[j] for j in rng.choice(500, 20, replace=False)] for _ in range(n)]
    records = [
        {"epoch": e, "train/loss": 5.0 - e / 10, "cluster/objective": 1e4 - e, "time/train_s": 60.0}
        for e in range(30)
    ]
    if args.out.exists():
        shutil.rmtree(args.out)
    options = ReportOptions()
    timings: dict[str, float] = {}

    def timed(name: str, fn, *a, **kw):  # type: ignore[no-untyped-def]
        tic = time.perf_counter()
        value = fn(*a, **kw)
        timings[name] = round(time.perf_counter() - tic, 2)
        return value

    rows = [",".join(tags) for tags in image_tags]
    tags = timed("tags_s", lambda: overrepresented(labels, TagPairs.from_strings(rows), k))
    cards = timed("cards_s", cluster_cards, labels, labels // per_super, labels % per_super,
                  distances, k, options, tags)  # fmt: skip
    kwargs = dict(title=f"synthetic run, k = {k}", summary=[("images", f"{n:,}")],
                  config=[("cluster.k", str(k))], records=records, cards=cards,
                  collection=ArrayCollection(images), paths=[f"img_{i}.png" for i in range(n)],
                  options=options)  # fmt: skip
    timed("render_first_s", render_report, args.out, **kwargs)  # thumbnails made here
    timed("render_cached_s", render_report, args.out, **kwargs)  # thumbnails reused
    pages = sorted((args.out / "clusters").glob("page-*.html"))
    sizes = [p.stat().st_size for p in pages]
    thumbs = list((args.out / "thumbs").rglob("*.jpg"))
    prep = timings["tags_s"] + timings["cards_s"]
    print(json.dumps({
        "k": k, "images": n, "pages": len(pages), "largest_page_kb": round(max(sizes) / 1024),
        "index_kb": round((args.out / "index.html").stat().st_size / 1024),
        "tree_kb": round((args.out / "tree.html").stat().st_size / 1024),
        "thumbnails": len(thumbs), **timings,
        "first_report_s": round(prep + timings["render_first_s"], 2),
        "cached_report_s": round(prep + timings["render_cached_s"], 2),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
