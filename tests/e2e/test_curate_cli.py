"""End to end: curate a tiny run through the CLI, train on the list, inspect the curation."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
from tests.conftest import write_pattern_images

from deepercluster import cli
from deepercluster.engine.run_folder import open_run

SMALL = [
    "--set", "model.arch=small", "--set", "data.resolution=32", "--set", "data.workers=0",
    "--set", "cluster.k=8", "--set", "cluster.super_clusters=2", "--set", "cluster.pca_dim=16",
    "--set", "train.epochs=1", "--set", "train.batch_size=16", "--no-progress",
]  # fmt: skip


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def run_with_copies(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[set[str]]]:
    """A tiny run over 48 pattern images and exact copies of 6 of them."""
    root = tmp_path_factory.mktemp("curate")
    images = write_pattern_images(root / "images", n=48)
    planted = []
    for i in (0, 5, 10, 21, 30, 47):
        copy = images / f"zcopy_{i:03d}.png"
        shutil.copy(images / f"img_{i:03d}.png", copy)
        planted.append({str(images / f"img_{i:03d}.png"), str(copy)})
    run = root / "run"
    assert cli.main(["train", "--data", str(images), "--out", str(run), *SMALL]) == 0
    return run, planted


def test_curate_then_train_on_the_list_then_inspect(
    run_with_copies: tuple[Path, list[set[str]]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run, planted = run_with_copies
    out = tmp_path / "curated.csv"
    # exact copies only: the plain cosine at 1
    argv = ["curate", str(run), "--size", "24", "--dedup", "1.0", "--dedup-neighbours", "0",
            "--out", str(out)]  # fmt: skip
    assert cli.main([*argv, "--no-progress"]) == 0
    assert "kept 24, dropped 6 near-duplicates" in capsys.readouterr().out
    kept = _rows(out)
    assert len(kept) == 24 and list(kept[0]) == ["path", "super_cluster", "sub_cluster", "reason"]
    dropped = _rows(tmp_path / "curated.dropped.csv")
    assert len(kept) + len(dropped) == 54
    groups: dict[str, set[str]] = {}
    for row in _rows(tmp_path / "curated.groups.csv"):
        groups.setdefault(row["group"], set()).add(row["path"])
    assert sorted(groups.values(), key=min) == sorted(planted, key=min)
    kept_paths = {r["path"] for r in kept}
    assert all(len(pair & kept_paths) <= 1 for pair in planted)
    assert sum(r["reason"].startswith("duplicate of ") for r in dropped) == 6
    assert {r["outcome"] for r in dropped} == {"duplicate", "over_quota"}
    # no --per-cluster-cap: a cluster's images left out are over its share of the budget
    over = [r["reason"] for r in dropped if r["outcome"] == "over_quota"]
    assert over and all(r.startswith("over its cluster's quota of the --size budget") for r in over)
    summary = json.loads((tmp_path / "curated.json").read_text())
    quota = summary["clusters"]["quota"]
    assert sum(quota) == 24 and summary["counts"]["kept"] == 24
    per_super = [sum(quota[:4]), sum(quota[4:])]
    pool = summary["clusters"]["pool"]
    assert per_super == [12, 12] or min(sum(pool[:4]), sum(pool[4:])) < 12

    # The report's section: the groups side by side, the tag balance before and after.
    tags = tmp_path / "tags.csv"
    kinds = ("rows", "columns", "blob", "checker")
    names = [Path(r["path"]).name for r in (*kept, *dropped)]
    tags.write_text("file,tags\n" + "".join(f"{n},{kinds[int(n[-7:-4]) % 4]}\n" for n in names))
    report = tmp_path / "report"
    inspect = ["inspect", str(run), "--curation", str(out), "--metadata", str(tags)]
    assert cli.main([*inspect, "--out", str(report), "--no-progress"]) == 0
    index = (report / "index.html").read_text()
    assert "<h2>Curation (curated.csv)</h2>" in index and "Near-duplicate groups (6)" in index
    assert index.count("stays</figcaption>") == 6 and index.count("cos 1.000") == 6
    assert "KL to uniform" in index and "<td>checker</td>" in index
    assert "kept and dropped per cluster" in index
    for src in re.findall(r'src="(thumbs/[^"]+)"', index):
        assert (report / src).is_file()

    # The list trains as it is.
    again = tmp_path / "again"
    assert cli.main(["train", "--data", str(out), "--out", str(again), *SMALL]) == 0
    assert open_run(again).n_images == 24

    # Same seed, same subset; the embeddings are read back from the run folder.
    out2 = tmp_path / "second.csv"
    assert cli.main([*argv[:-1], str(out2), "--no-progress"]) == 0
    assert out2.read_text() == out.read_text()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--size", "1000"], "--size 1000 is larger than the pool"),
        (["--size", "10", "--dedup", "1.5"], "--dedup 1.5 is outside (0, 1]"),
        (["--size", "10", "--dedup", "0"], "--dedup 0.0 is outside (0, 1]"),
        (["--size", "50", "--dedup", "1.0", "--dedup-neighbours", "0"], "ask for at most 48"),
        (["--size", "10", "--dedup-neighbours", "-1"], "--dedup-neighbours must be 0"),
        (["--size", "10", "--dedup-layer", "fc7"], "--dedup-layer 'fc7' is not a layer"),
    ],
)
def test_bad_arguments_end_in_one_line_and_exit_2(
    run_with_copies: tuple[Path, list[set[str]]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    run, _ = run_with_copies
    code = cli.main(["curate", str(run), "--out", str(tmp_path / "c.csv"), "--no-progress", *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_a_kept_list_that_is_not_csv_is_refused_before_any_work(
    run_with_copies: tuple[Path, list[set[str]]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run, _ = run_with_copies
    out = tmp_path / "kept.json"  # its summary, kept.json, would overwrite it
    assert cli.main(["curate", str(run), "--size", "10", "--out", str(out)]) == 2
    assert "--out " + str(out) + " must be a .csv file" in capsys.readouterr().err
    assert not out.exists()


def test_a_run_without_clustering_is_refused(
    tiny_image_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "rotnet"
    rotnet = ["--preset", "rotnet", "--set", "cluster.k=1", "--set", "cluster.super_clusters=1"]
    argv = ["train", "--data", str(tiny_image_dir), "--out", str(run), *SMALL, *rotnet]
    assert cli.main(argv) == 0
    capsys.readouterr()
    assert cli.main(["curate", str(run), "--size", "8", "--out", str(tmp_path / "c.csv")]) == 2
    assert "no clustering to curate with (a RotNet run" in capsys.readouterr().err


def test_the_default_scaled_test_groups_every_exact_copy(
    run_with_copies: tuple[Path, list[set[str]]], tmp_path: Path
) -> None:
    run, planted = run_with_copies
    out = tmp_path / "default.csv"
    assert cli.main(["curate", str(run), "--size", "24", "--out", str(out), "--no-progress"]) == 0
    groups: dict[str, set[str]] = {}
    for row in _rows(tmp_path / "default.groups.csv"):
        groups.setdefault(row["group"], set()).add(row["path"])
    assert all(any(pair <= g for g in groups.values()) for pair in planted)
