"""The embedded demo runs end to end on scikit-learn's digits (shortened to 2 epochs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepercluster import cli
from deepercluster.demo import digits_collection, run_demo


def test_digits_collection_is_real_rgb_images() -> None:
    collection = digits_collection(32)
    assert len(collection) == 1797
    assert collection.labels is not None and set(collection.labels.tolist()) == set(range(10))
    image = collection.read(0)
    assert image.mode == "RGB" and image.size == (32, 32)


@pytest.mark.slow
def test_demo_reports_what_was_learned(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = run_demo(out=tmp_path / "demo", epochs=2, progress=False)
    text = capsys.readouterr().out
    assert "NMI(k=40 clusters, digit labels)" in text and "logistic regression" in text
    for value in (report.nmi_clusters, report.nmi_clusters_random, report.linear_trained):
        assert 0.0 < value <= 1.0
    # even an untrained convnet separates digits far above chance (10%): the probes are sane
    assert report.linear_random > 0.5 and report.knn_random > 0.5
    assert (tmp_path / "demo" / "backbone.pth").exists()
    # a second run resumes the finished run instead of training again
    assert (
        cli.main(["demo", "--out", str(tmp_path / "demo"), "--epochs", "2", "--no-progress"]) == 0
    )
