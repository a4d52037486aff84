"""``deepercluster eval`` end to end on a tiny generated, labelled image collection.

One short smoke-config pre-training run (module-scoped), then every protocol through the
command line: results written as JSON + Markdown (+ PNG), the table printed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.conftest import write_stripe_classes

from deepercluster.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    base = tmp_path_factory.mktemp("eval")
    train = write_stripe_classes(base / "train", 16, seed=0)
    test = write_stripe_classes(base / "test", 8, seed=1)
    run = base / "run"
    code = main(
        ["train", "--config", str(REPO / "configs/smoke.toml"), "--data", str(train),
         "--out", str(run), "--set", "cluster.k=4", "--no-progress"]
    )  # fmt: skip
    assert code == 0
    return train, test, run


def test_linear_probes_write_json_markdown_png_and_print_the_table(
    labelled: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    train, test, run = labelled
    out = tmp_path / "linear"
    args = ["eval", "linear", "--checkpoint", str(run), "--train-data", str(train),
            "--test-data", str(test), "--epochs", "3", "--seeds", "0,1", "--out", str(out),
            "--no-progress"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| conv1 |" in printed and "| conv5 |" in printed
    result = json.loads((out / "linear.json").read_text())
    assert [r["layer"] for r in result["layers"]] == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    for r in result["layers"]:
        assert r["dim"] <= 10_000 and len(r["test"]) == 2 and 0 <= r["mean"] <= 100
        assert f"lr={r['best_lr']:g},wd={r['best_weight_decay']:g}" in r["heldout"]
    # stripes' orientation is a low-level cue: some layer separates the two classes well
    assert max(r["mean"] for r in result["layers"]) >= 75
    assert (out / "linear.md").read_text().count("| conv") == 5
    assert (out / "linear.png").read_bytes()[:4] == b"\x89PNG"
    # the per-layer features are cached under the results folder for the next command
    cache = next((out / "cache").iterdir())
    assert (cache / "meta.json").exists()


def test_knn_and_kmeans(labelled: tuple[Path, Path, Path], tmp_path: Path) -> None:
    train, test, run = labelled
    out = tmp_path / "knn"
    assert main(["eval", "knn", "--checkpoint", str(run), "--train-data", str(train),
                 "--test-data", str(test), "--k", "5", "10", "--kmeans", "2", "--out", str(out),
                 "--no-progress"]) == 0  # fmt: skip
    result = json.loads((out / "knn.json").read_text())
    assert set(result["knn_top1"]) == {"5", "10"} and result["n_test"] == 16
    assert result["kmeans"]["k"] == 2 and 0 <= result["kmeans"]["nmi"] <= 1


def test_clusters_vs_folder_labels_and_vs_tags(
    labelled: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    train, _, run = labelled
    assert main(["eval", "clusters", "--run", str(run)]) == 0
    result = json.loads((run / "eval" / "clusters.json").read_text())
    assert result["classes"] == ["horizontal", "vertical"]
    assert result["sub-clusters"]["images"] == 32 and 0 <= result["sub-clusters"]["nmi"] <= 1
    assert "| sub-clusters |" in capsys.readouterr().out
    # The smoke config re-clusters at every epoch: the stability log has epoch 2 (from 1).
    assert [row["epoch"] for row in result["nmi_previous"]] == [2]
    metadata = train.parent / "metadata.csv"
    lines = ["file,tags"] + [
        f'{p.name},"{p.parent.name},stripes"' for p in sorted(train.rglob("*.png"))
    ]  # file names repeat across classes, so a bare name fits two rows equally well...
    metadata.write_text("\n".join(lines) + "\n")
    code = main(["eval", "clusters", "--run", str(run), "--metadata", str(metadata)])
    assert code == 2  # ...and is refused with a clear error (data.pathmatch)
    assert "enough parent folders" in capsys.readouterr().err
    unique = ["path,tags"] + [
        f'{p},"{p.parent.name},stripes"' for p in sorted(train.rglob("*.png"))
    ]
    metadata.write_text("\n".join(unique) + "\n")
    assert main(["eval", "clusters", "--run", str(run), "--metadata", str(metadata)]) == 0
    tags = json.loads((run / "eval" / "clusters.json").read_text())["tags"]["sub-clusters"]
    assert tags["tags"] == 3 and {t["tag"] for t in tags["top_mi_tags"]} >= {"horizontal"}
    assert "most specific tag" in capsys.readouterr().out


def test_finetune_with_scratch_baseline(labelled: tuple[Path, Path, Path], tmp_path: Path) -> None:
    train, test, run = labelled
    out = tmp_path / "ft"
    assert main(["eval", "finetune", "--checkpoint", str(run), "--train-data", str(train),
                 "--test-data", str(test), "--epochs", "1", "--ft-batch-size", "16",
                 "--from-scratch-baseline", "--out", str(out), "--no-progress"]) == 0  # fmt: skip
    result = json.loads((out / "finetune.json").read_text())
    assert set(result["runs"]) == {"pre-trained", "random init"}
    assert result["settings"]["fold_sobel"] is True
    assert (out / "finetune.png").exists()


def test_missing_checkpoint_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "nope")
    data = str(tmp_path)
    code = main(["eval", "knn", "--checkpoint", missing, "--train-data", data, "--test-data", data])
    assert code == 2 and "does not exist" in capsys.readouterr().err
