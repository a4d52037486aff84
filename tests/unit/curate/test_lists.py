"""The curation's files: each dropped image's outcome and reason, read back as written."""

from __future__ import annotations

import csv
from pathlib import Path

from tests.unit.curate.test_sampling import _pool

from deepercluster.curate.lists import read_curation, write_curation
from deepercluster.curate.select import select
from deepercluster.curate.settings import CurateSettings


def test_dropped_images_say_whether_the_cap_or_the_budget_left_them_out(tmp_path: Path) -> None:
    store, labels, centroids, super_of = _pool(tmp_path)
    settings = CurateSettings(size=30, dedup=None, per_cluster_cap=5)
    cur = select(store, labels, centroids, super_of, settings)
    paths = [f"img{i:03d}.jpg" for i in range(len(labels))]
    out = tmp_path / "curated.csv"
    write_curation(cur, paths, out, pick="random", cap=5, summary={})
    with (tmp_path / "curated.dropped.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["outcome"] for r in rows} == {"over_quota", "unreadable"}
    over = [r["reason"] for r in rows if r["outcome"] == "over_quota"]
    assert over and all(r.startswith("over the cap of 5 per cluster: cluster ") for r in over)
    # the same subset without a cap: the budget, not a cap, leaves the images out
    uncapped = select(store, labels, centroids, super_of, CurateSettings(size=30, dedup=None))
    write_curation(uncapped, paths, out, pick="random", summary={})
    files = read_curation(out)
    assert len(files.kept) == 30 and {o for _, o in files.dropped} == {"over_quota", "unreadable"}
    with (tmp_path / "curated.dropped.csv").open(newline="") as fh:
        reasons = [r["reason"] for r in csv.DictReader(fh) if r["outcome"] == "over_quota"]
    assert all(r.startswith("over its cluster's quota of the --size budget") for r in reasons)
    # a dropped list written before the outcome column: the outcome comes from the words
    old = tmp_path / "old.csv"
    old.write_text("path,super_cluster,sub_cluster,reason\na.jpg,0,0,x\n")
    (tmp_path / "old.dropped.csv").write_text(
        "path,super_cluster,sub_cluster,reason\n"
        "b.jpg,0,0,duplicate of a.jpg (cosine 0.990)\n"
        "c.jpg,0,0,over the cap: cluster 0 gave 1 of 3\n"
        "d.jpg,-1,-1,unreadable\n"
    )
    assert read_curation(old).dropped == [
        ("b.jpg", "duplicate"), ("c.jpg", "over_quota"), ("d.jpg", "unreadable")
    ]  # fmt: skip
