"""The HTML report: pages, cards, thumbnails cache, tags, self-containment."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from tests.unit.inspect.conftest import K, TinyRun

from deepercluster.data import ArrayCollection
from deepercluster.inspect.report import ReportOptions, cluster_cards, inspect_run
from deepercluster.inspect.thumbnails import ThumbnailCache


def _write_metadata(run: TinyRun, path: Path) -> None:
    # Images of cluster 0 carry "zebra"; every image carries "food".
    labels = run.clustering.labels
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "tags"])
        for i, img in enumerate(sorted(run.images.glob("*.png"))):
            writer.writerow([f"images/{img.name}", "food,zebra" if labels[i] == 0 else "food"])


def test_report_pages_cards_and_thumbnails(tiny_run: TinyRun, tmp_path: Path) -> None:
    meta = tmp_path / "meta.csv"
    _write_metadata(tiny_run, meta)
    options = ReportOptions(per_page=4, nearest=3, random=2)
    index = inspect_run(
        tiny_run.path, out=tmp_path / "report", metadata=meta, options=options, progress=False
    )
    report = index.parent
    pages = sorted((report / "clusters").glob("page-*.html"))
    assert [p.name for p in pages] == ["page-0001.html", "page-0002.html"]
    cards = [re.findall(r'<div class="card" id="c(\d+)"', p.read_text()) for p in pages]
    assert cards == [["0", "1", "2", "3"], ["4", "5"]]
    sizes = np.bincount(tiny_run.clustering.labels[tiny_run.clustering.valid], minlength=K)
    first = pages[0].read_text()
    assert f"{sizes[0]} images" in first
    assert "tags: zebra (" in first and "food (" not in first  # lift 1 tags are not shown
    for name in ("training.png", "clusters.png", "stages.png", "sizes.png"):
        assert (report / "figures" / name).stat().st_size > 1000
    # every referenced file exists and nothing points outside the report (no CDN, no server)
    for page in [index, report / "tree.html", *pages]:
        html = page.read_text()
        assert "http://" not in html and "https://" not in html
        for ref in re.findall(r'(?:src|href)="([^"#]+)', html):
            assert (page.parent / ref).is_file(), (page, ref)
    shown = re.findall(r'src="\.\./thumbs/([^"]+)"', first)
    assert len(shown) == 4 * 3 + sum(min(2, max(s - 3, 0)) for s in sizes[:4])
    tree = (report / "tree.html").read_text()
    assert tree.count("<details>") == 2 and tree.count("cluster ") >= K
    assert "img_bad.png" in index.read_text()  # listed among the unreadable images


def test_thumbnails_are_made_once(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 255, (5, 40, 60, 3), dtype=np.uint8)
    collection = ArrayCollection(images)
    cache = ThumbnailCache(tmp_path, size=16)
    assert cache.ensure(collection, [0, 2, 2, 4]) == (3, [])
    from PIL import Image

    with Image.open(tmp_path / cache.relative(2)) as thumb:
        assert max(thumb.size) == 16 and thumb.size == (16, 11)
    assert cache.ensure(collection, [0, 1, 2]) == (1, [])


def test_cluster_cards_nearest_first_and_random_from_the_rest() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, -1])
    distances = np.array([0.4, 0.1, 0.3, 0.2, 0.5, 0.6, np.nan], dtype=np.float32)
    cards = cluster_cards(
        labels, labels.clip(0), np.zeros(7, int), distances, 2, ReportOptions(nearest=2, random=5)
    )
    assert cards[0].nearest == [1, 3] and cards[0].random == [0, 2] and cards[0].size == 4
    assert cards[1].nearest == [4, 5] and cards[1].random == []
    assert cards[0].mean_distance == pytest.approx(0.25)
