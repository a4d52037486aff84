"""Metric files: JSONL is append-only, CSV gains columns, TensorBoard events are written."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from deepercluster.log import MetricsWriter


def test_metrics_files(tmp_path: Path) -> None:
    with MetricsWriter(tmp_path) as writer:
        writer.write({"epoch": 0, "train/loss": 2.5}, step=0)
        writer.write({"epoch": 1, "train/loss": 2.0, "cluster/objective": 12.0}, step=1)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1]
    with (tmp_path / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["train/loss"] for r in rows] == ["2.5", "2.0"]
    assert rows[0]["cluster/objective"] == "" and rows[1]["cluster/objective"] == "12.0"
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    # a resumed run appends
    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        writer.write({"epoch": 2, "train/loss": 1.5, "cluster/objective": 11.0}, step=2)
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3
