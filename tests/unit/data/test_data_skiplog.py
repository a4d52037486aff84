"""SkipLog: dedup, merge, summary, atomic CSV."""

from __future__ import annotations

import csv
from pathlib import Path

from deepercluster.data import SkipLog


def test_dedup_keeps_first_reason_and_order() -> None:
    log = SkipLog()
    log.record("b.jpg", "zero-byte file")
    log.record("a.jpg", "truncated image: cut")
    log.record("b.jpg", "not an image: later")
    assert log.entries == [("b.jpg", "zero-byte file"), ("a.jpg", "truncated image: cut")]
    assert len(log) == 2 and "a.jpg" in log and "c.jpg" not in log


def test_merge() -> None:
    left = SkipLog([("a", "zero-byte file")])
    left.merge(SkipLog([("a", "other"), ("b", "not an image: html")]))
    assert left.entries == [("a", "zero-byte file"), ("b", "not an image: html")]


def test_summary_and_csv(tmp_path: Path) -> None:
    log = SkipLog()
    assert log.summary() == "no images skipped"
    log.record("x.jpg", "truncated image: image file is truncated")
    assert log.summary() == "1 image skipped (1 truncated image)"
    log.record("y.jpg", "zero-byte file")
    log.record("z, with comma.jpg", "truncated image: broken data stream")
    target = tmp_path / "runs" / "x" / "skipped.csv"
    log.write_csv(target)
    assert log.summary() == (
        f"3 images skipped (2 truncated image, 1 zero-byte file); see {target}"
    )
    with open(target, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "reason"]
    assert rows[1:] == [list(entry) for entry in log.entries]
    assert [p.name for p in target.parent.iterdir()] == ["skipped.csv"]  # no temp file left


def test_csv_rewrite_replaces_the_file(tmp_path: Path) -> None:
    target = tmp_path / "skipped.csv"
    target.write_text("old content that is longer than the new one\n" * 10)
    SkipLog([("a", "zero-byte file")]).write_csv(target)
    assert target.read_text().splitlines() == ["path,reason", "a,zero-byte file"]
