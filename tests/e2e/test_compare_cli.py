"""``deepercluster compare`` end to end on a tiny generated labelled folder.

Two methods (the random network and a 4-cluster DeepCluster variant), one seed, one epoch:
the three result files, resuming after a simulated kill without retraining, a refused change
of budget, and bad arguments.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
from tests.conftest import write_stripe_classes

from deepercluster.cli import main

BUDGET = [
    "--set", "model.arch=small", "--set", "data.resolution=32", "--set", "data.workers=0",
    "--set", "train.epochs=1", "--set", "train.batch_size=12", "--set", "cluster.pca_dim=8",
]  # fmt: skip
CLASSES = ("horizontal", "vertical", "diagonal")
VARIANTS = """
methods = ["random", "dc-k4"]

[variant.dc-k4]
preset = "deepcluster"
set = ["cluster.k=4"]
"""


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path]:
    """Training images in a tar shard (members under <class>/), test images in a CSV list with
    a label column: two of the three labelled inputs (class folders are the third)."""
    base = tmp_path_factory.mktemp("compare")
    folder = write_stripe_classes(base / "train", 12, seed=0, classes=CLASSES)
    train = base / "train.tar"
    with tarfile.open(train, "w") as tar:
        tar.add(folder, arcname="train")
    test = write_stripe_classes(base / "test", 6, seed=1, classes=CLASSES)
    listing = base / "test.csv"
    rows = [f"{p.relative_to(base)},{p.parent.name}" for p in sorted(test.rglob("*.png"))]
    listing.write_text("path,label\n" + "\n".join(rows) + "\n")
    variants = base / "study.toml"
    variants.write_text(VARIANTS)
    out = base / "out"
    args = ["compare", "--train-data", str(train), "--test-data", str(listing), "--out", str(out),
            "--variants", str(variants), "--seeds", "1", "--probe-epochs", "1", "--device", "cpu",
            "--max-train", "30", "--widen", "0", *BUDGET]  # fmt: skip
    assert main(args) == 0
    return args, out


def test_compare_writes_json_markdown_and_plot(compared: tuple[list[str], Path]) -> None:
    _, out = compared
    result = json.loads((out / "compare.json").read_text())
    assert list(result["methods"]) == ["random", "dc-k4"]
    dc = result["methods"]["dc-k4"]["runs"][0]
    assert dc["config"]["cluster"]["k"] == 4 and dc["config"]["train"]["epochs"] == 1
    assert result["methods"]["random"]["runs"][0]["config"]["cluster"]["k"] != 4
    assert dc["pretrain_seconds"] > 0 and "train/loss" in dc["curves"]
    assert 0.0 <= dc["clusters"]["result"]["sub-clusters"]["nmi"] <= 1.0
    assert "clusters" not in result["methods"]["random"]["runs"][0]
    rows = {s["method"]: s for s in result["summary"]}
    for row in rows.values():
        assert row["best_layer"] in {"conv1", "conv2", "conv3", "conv4", "conv5"}
        assert 0 <= row["best"]["mean"] <= 100 and 0 <= row["knn"]["mean"] <= 100
        assert 0 <= row["kmeans_nmi"]["mean"] <= 1
    assert result["pretraining_images"]["count"] == 30  # --max-train: 10 of each class
    assert dc["clusters"]["result"]["sub-clusters"]["images"] == 30
    assert result["classes"] == ["diagonal", "horizontal", "vertical"]
    md = (out / "compare.md").read_text()
    assert "| random | 1 |" in md and "| dc-k4 | 1 |" in md
    assert "## Linear probes per layer" in md and "conv5: test %" in md
    # --widen 0: a choice at the grid's edge stays there, and the report says so
    edges = [r for m in rows.values() for r in m["edges"].values() if r]
    assert edges and "⚠ marks a choice still at an edge" in md
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "runs" / "dc-k4" / "seed0" / "backbone.pth").is_file()
    assert not (out / "scores" / "dc-k4" / "seed0" / "eval" / "cache").exists()


def test_a_killed_comparison_resumes_without_retraining(
    compared: tuple[list[str], Path],
) -> None:
    args, out = compared
    backbone = out / "runs" / "dc-k4" / "seed0" / "backbone.pth"
    trained_at = backbone.stat().st_mtime_ns
    knn = out / "scores" / "dc-k4" / "seed0" / "knn.json"
    knn.unlink()  # killed while scoring the kNN of the last method
    log = out / "compare.log"
    before = log.read_text()
    assert main(args) == 0
    lines = log.read_text()[len(before) :].splitlines()
    assert any("dc-k4 seed 0: pre-training: reused" in line for line in lines)
    assert any("dc-k4 seed 0: linear probes per layer: reused" in line for line in lines)
    assert any("dc-k4 seed 0: kNN and k-means: done" in line for line in lines)
    assert backbone.stat().st_mtime_ns == trained_at and knn.is_file()


def test_a_changed_budget_is_refused(
    compared: tuple[list[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    args, _ = compared
    assert main([*args, "--set", "train.lr=0.2"]) == 73
    err = capsys.readouterr().err
    assert "pre-trained with other settings" in err and "train.lr" in err


def test_bad_arguments_exit_2_with_the_message(
    compared: tuple[list[str], Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    args, _ = compared
    assert main([*args, "--methods", "random,simclr"]) == 2
    assert "unknown method 'simclr'" in capsys.readouterr().err
    missing = [a if a != args[args.index("--variants") + 1] else str(tmp_path / "no.toml")
               for a in args]  # fmt: skip
    assert main(missing) == 2
    assert "variants file" in capsys.readouterr().err
