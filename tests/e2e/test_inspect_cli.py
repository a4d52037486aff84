"""End to end: train a tiny run through the CLI, then inspect, export and embed it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import deepercluster
from deepercluster import cli
from deepercluster.engine.checkpoint import load_checkpoint
from deepercluster.inspect.assignments import read_assignments

SMALL = [
    "--set", "model.arch=small", "--set", "data.resolution=32", "--set", "data.workers=0",
    "--set", "cluster.k=8", "--set", "cluster.super_clusters=2", "--set", "cluster.pca_dim=16",
    "--set", "train.epochs=1", "--set", "train.batch_size=16", "--no-progress",
]  # fmt: skip


def test_inspect_assignments_materialize_embed_export(
    tiny_image_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert cli.main(["train", "--data", str(tiny_image_dir), "--out", str(run), *SMALL]) == 0
    labels = load_checkpoint(run / "checkpoint.pth")["clustering"]["labels"].numpy()
    capsys.readouterr()

    assert cli.main(["inspect", str(run), "--per-page", "5", "--no-progress"]) == 0
    index = Path(capsys.readouterr().out.strip())
    assert index == run / "report" / "index.html" and index.is_file()
    pages = sorted((run / "report" / "clusters").glob("page-*.html"))
    assert len(pages) == 2
    assert sum(p.read_text().count('class="card"') for p in pages) == 8

    for fmt in ("csv", "parquet"):
        assert cli.main(["assignments", str(run), "--format", fmt, "--no-progress"]) == 0
        table = read_assignments(run / f"assignments.{fmt}")
        np.testing.assert_array_equal(table.clusters, labels)
        assert np.isfinite(table.distances).all()

    clusters = tmp_path / "clusters"
    assert cli.main(["materialize", str(run), "--to", str(clusters), "--link"]) == 0
    folders = sorted(clusters.glob("super-*/cluster-*"))
    assert len(folders) == 8
    assert sum(len(list(f.iterdir())) for f in folders) == 64

    emb = tmp_path / "emb.npy"
    argv = ["embed", "--checkpoint", str(run), "--data", str(tiny_image_dir), "--out", str(emb)]
    capsys.readouterr()
    assert cli.main([*argv, "--no-progress"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{emb}: features (one row per image)",
        f"{tmp_path / 'emb.clusters.csv'}: nearest cluster and distance of each image",
    ]
    assert np.load(emb).shape == (64, 16)
    assert (tmp_path / "emb.clusters.csv").read_text().count("\n") == 65

    out = tmp_path / "backbone.pt"
    argv = ["export", str(run), "--to", str(out), "--rgb", "--onnx", str(tmp_path / "b.onnx")]
    assert cli.main(argv) == 0
    assert "max abs diff" in capsys.readouterr().out
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        folded = deepercluster.load_backbone(out)(x)
        original = deepercluster.load_backbone(run / "backbone.pth")(x)
    torch.testing.assert_close(folded, original, rtol=1e-4, atol=1e-5)


def test_inspect_without_a_run_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["inspect", str(tmp_path)]) == 2
    assert "checkpoint.pth not found" in capsys.readouterr().err
